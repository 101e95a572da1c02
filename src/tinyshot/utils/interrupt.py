"""SIGTERM handled like Ctrl-C: it raises in the main thread, so every stage unwinds the same
way (checkpoints written on interrupt, finished items kept) and the CLI prints one message."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process gets SIGTERM (a scheduler, `kill`, a
    container stop). A KeyboardInterrupt, so code that keeps work on Ctrl-C keeps it here too."""

    signum = int(signal.SIGTERM)


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal number, the shell's convention: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + (exc.signum if isinstance(exc, Terminated) else int(signal.SIGINT))


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While active, SIGTERM raises Terminated in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum, _frame) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
