"""Logging to the console (rich) and to a file in the run folder; progress bars through tqdm."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
LOGGER_NAME = "tinyshot"


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def setup_logging(run_dir: str | Path | None = None, verbose: bool = False) -> logging.Logger:
    """Console at INFO (DEBUG with verbose); run_dir/log.txt at DEBUG, appended across resumes."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG)
    if not any(getattr(h, "_tinyshot_console", False) for h in logger.handlers):
        try:
            from rich.console import Console
            from rich.logging import RichHandler

            # stderr, so that stdout carries only results (`--json` output can be piped)
            console: logging.Handler = RichHandler(
                console=Console(stderr=True), show_path=False, rich_tracebacks=False
            )
        except ImportError:  # pragma: no cover
            console = logging.StreamHandler(sys.stderr)
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


def progress(
    it: Iterable[T], desc: str = "", total: int | None = None, disable: bool | None = None, **kw
) -> Iterator[T]:
    """A tqdm bar that stays quiet when stderr is not a terminal unless TINYSHOT_PROGRESS=1."""
    import os

    if disable is None:
        disable = not (sys.stderr.isatty() or os.environ.get("TINYSHOT_PROGRESS") == "1")
    return iter(tqdm(it, desc=desc, total=total, disable=disable, dynamic_ncols=True, **kw))


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
