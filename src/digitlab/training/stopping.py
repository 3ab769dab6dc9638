"""Clean stops on Ctrl-C / SIGTERM: a flag the training loop polls, and an immediate stop while a run finishes."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class Interrupted(BaseException):
    """Training stopped on request; `last.pt` holds a resumable checkpoint.

    `finishing`: the training steps were all done and saved; the stop came during validation, calibration,
    test evaluation or plots, which `--resume` redoes. A BaseException, as KeyboardInterrupt is: raised from a
    signal handler anywhere in that code, no `except Exception` on the way may turn it into another error.
    """

    def __init__(self, run: str, finishing: bool = False) -> None:
        super().__init__(run)
        self.run = run
        self.finishing = finishing


class StopRequest:
    """Whether a stop was asked for: SIGINT/SIGTERM received (see `stop_on_signals`) or `extra()` true."""

    def __init__(self, extra: Callable[[], bool] | None = None) -> None:
        self.signalled = False
        self._extra = extra
        self._urgent: str | None = None  # the run directory while a signal must raise at once

    def __call__(self) -> bool:
        return self.signalled or (self._extra is not None and self._extra())

    def handler(self, signum: int, frame: Any) -> None:
        self.signalled = True
        if self._urgent is not None:
            raise Interrupted(self._urgent, finishing=True)

    def check(self, run: str) -> None:
        """Raise `Interrupted` (finishing) if a stop was asked for: called between the post-training steps."""
        if self():
            raise Interrupted(run, finishing=True)

    @contextmanager
    def immediate(self, run: str) -> Iterator[None]:
        """Inside, a signal raises `Interrupted` at once instead of waiting for the next check: after the last
        training step there is nothing left to save (every file is written atomically), so a stop need not
        wait out a whole test evaluation. A stop already asked for raises on entry."""
        self.check(run)
        self._urgent = run
        try:
            yield
        finally:
            self._urgent = None


@contextmanager
def stop_on_signals(extra: Callable[[], bool] | None = None) -> Iterator[StopRequest]:
    """A `StopRequest` that SIGINT/SIGTERM set while the block runs (main thread only; handlers restored after)."""
    stop = StopRequest(extra)
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.signal(s, stop.handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)
