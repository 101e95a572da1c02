"""Logging to the console (rich) and to a file in the run folder; progress bars through tqdm."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
LOGGER_NAME = "tinyshot"


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (pytest's capture swaps it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(run_dir: str | Path | None = None, verbose: bool = False) -> logging.Logger:
    """Console at INFO (DEBUG with verbose); run_dir/log.txt at DEBUG, appended across resumes."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG)
    if not any(getattr(h, "_tinyshot_console", False) for h in logger.handlers):
        # stderr, so that stdout carries only results (`--json` output can be piped)
        console: logging.Handler = _StderrHandler()
        console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        if sys.stderr.isatty():  # rich on a terminal; one plain line per message in a file
            try:
                from rich.console import Console
                from rich.logging import RichHandler

                console = RichHandler(
                    console=Console(stderr=True), show_path=False, rich_tracebacks=False
                )
            except ImportError:  # pragma: no cover
                pass
        console.setLevel(logging.DEBUG if verbose else logging.INFO)
        console._tinyshot_console = True  # type: ignore[attr-defined]
        logger.addHandler(console)
    if run_dir is not None:
        log_path = Path(run_dir) / "log.txt"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if not any(
            isinstance(h, logging.FileHandler) and Path(h.baseFilename) == log_path.resolve()
            for h in logger.handlers
        ):
            fh = logging.FileHandler(log_path)
            fh.setLevel(logging.DEBUG)
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logger.addHandler(fh)
    logger.propagate = False
    return logger


# Without a terminal (output redirected to a file, a job scheduler), progress is a log line at
# INFO: at each 10% of the work if PROGRESS_MIN_S have passed since the last line, and at
# least every PROGRESS_EVERY_S; a closing line when the loop took PROGRESS_MIN_S or more.
PROGRESS_EVERY_S = 30.0
PROGRESS_EVERY_FRACTION = 0.1
PROGRESS_MIN_S = 5.0


def _duration(seconds: float) -> str:
    """A duration a person reads at a glance: 45 s, 3 min, 1.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def bars_on_terminal() -> bool:
    """Progress as bars (stderr is a terminal, or TINYSHOT_PROGRESS=1) rather than log lines."""
    import os

    return sys.stderr.isatty() or os.environ.get("TINYSHOT_PROGRESS") == "1"


class Progress(Generic[T]):
    """Iterate with progress a person can follow, whatever the terminal.

    On a terminal (or with TINYSHOT_PROGRESS=1): a tqdm bar, plus the same lines at DEBUG for
    log.txt. Otherwise: periodic INFO lines such as
    "textual inversion: step 450/1500 (30%), loss 0.0312, 2 min left". `set_postfix` adds
    figures (e.g. the loss) to both.
    """

    def __init__(
        self,
        it: Iterable[T],
        desc: str = "",
        total: int | None = None,
        disable: bool | None = None,
        unit: str = "step",
        initial: int = 0,
        logger: logging.Logger | None = None,
        **kw,
    ) -> None:
        self.it, self.desc, self.unit, self.initial = it, desc, unit, int(initial)
        if total is None and hasattr(it, "__len__"):
            total = len(it) + self.initial  # type: ignore[arg-type]
        self.total = total
        self.quiet = bool(disable)
        self.bar = None
        if not self.quiet and (disable is False or bars_on_terminal()):
            self.bar = tqdm(
                it, desc=desc, total=total, initial=initial, unit=unit, dynamic_ncols=True, **kw
            )
        self.level = logging.DEBUG if self.bar is not None else logging.INFO
        self.log = logger or get_logger("progress")
        self.postfix: dict[str, str] = {}
        self.n = self.initial

    def set_postfix(self, **kw: object) -> None:
        self.postfix = {k: str(v) for k, v in kw.items()}
        if self.bar is not None:
            self.bar.set_postfix(**kw)

    def line(self, elapsed: float) -> str:
        """'desc: step n/total (p%), k v, ... , eta left'."""
        parts = []
        if self.total:
            parts.append(f"{self.unit} {self.n}/{self.total} ({100 * self.n / self.total:.0f}%)")
        else:
            parts.append(f"{self.unit} {self.n}")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        done_here = self.n - self.initial
        if self.total and self.n >= self.total:
            parts.append(f"done in {_duration(elapsed)}")
        elif self.total and done_here > 0:
            parts.append(f"{_duration(elapsed / done_here * (self.total - self.n))} left")
        return f"{self.desc}: {', '.join(parts)}"

    def __iter__(self) -> Iterator[T]:
        import time

        if self.quiet:
            yield from self.it
            return
        source = self.bar if self.bar is not None else self.it
        start = last = time.monotonic()
        step = max(1, round(PROGRESS_EVERY_FRACTION * self.total)) if self.total else None
        next_mark = (self.n // step + 1) * step if step else None
        for item in source:
            yield item
            self.n += 1
            now = time.monotonic()
            at_mark = next_mark is not None and self.n >= next_mark
            if at_mark:
                next_mark = (self.n // step + 1) * step  # type: ignore[operator]
            final = self.total is not None and self.n >= self.total
            if final:
                continue
            if (at_mark and now - last >= PROGRESS_MIN_S) or now - last >= PROGRESS_EVERY_S:
                self.log.log(self.level, self.line(now - start))
                last = now
        elapsed = time.monotonic() - start
        if elapsed >= PROGRESS_MIN_S or last > start:
            self.log.log(self.level, self.line(elapsed))


def progress(
    it: Iterable[T],
    desc: str = "",
    total: int | None = None,
    disable: bool | None = None,
    **kw,
) -> Progress[T]:
    """Progress over `it` (see Progress): a bar on a terminal, INFO lines otherwise.

    disable=True is silent; False forces a bar; None (default) picks by the terminal.
    """
    return Progress(it, desc=desc, total=total, disable=disable, **kw)


@contextlib.contextmanager
def quiet_weight_loading() -> Iterator[None]:
    """Silence the bars transformers and diffusers draw for every from_pretrained ("Loading
    weights", "Loading checkpoint shards": a fit loads the generator several times); the
    caller logs one tinyshot line instead.

    huggingface_hub's bars stay as they were: a first run downloads 4-5 GB of SD weights, and
    without its download bars it looks hung. (transformers' disable_progress_bar also turns
    off the hub's bars, so they are switched back on.) Warnings are kept: a load report of
    missing weights means randomly initialised layers.
    """
    import importlib

    hub = _hub_tqdm()
    hub_on = hub is not None and not hub.are_progress_bars_disabled()
    silenced = []
    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        try:
            mod = importlib.import_module(name)
        except Exception:  # not installed, or broken: nothing to silence
            continue
        if mod.is_progress_bar_enabled():
            mod.disable_progress_bar()
            silenced.append(mod)
    if hub_on and hub.are_progress_bars_disabled():
        hub.enable_progress_bars()
    try:
        yield
    finally:
        for mod in silenced:
            mod.enable_progress_bar()
        if hub is not None and not hub_on and not hub.are_progress_bars_disabled():
            hub.disable_progress_bars()


def _hub_tqdm():
    """huggingface_hub.utils (its progress-bar switches), or None when it cannot be imported."""
    try:
        import huggingface_hub.utils as hub
    except Exception:
        return None
    return hub


@contextlib.contextmanager
def log_to(run_dir: str | Path) -> Iterator[None]:
    """Also log to run_dir/log.txt, for the duration of one stage only.

    Several runs in one process (tests, the episodes of a demo) then keep separate logs.
    """
    logger = logging.getLogger(LOGGER_NAME)
    before = set(logger.handlers)
    setup_logging(run_dir)
    try:
        yield
    finally:
        for h in set(logger.handlers) - before:
            if isinstance(h, logging.FileHandler):
                logger.removeHandler(h)
                h.close()
