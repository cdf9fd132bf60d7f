"""SIGTERM and Ctrl-C as a request to stop at the next step boundary, with a checkpoint.

Schedulers (Slurm, Kubernetes, torchrun passing on its own signal) send SIGTERM some seconds
before they kill a job. :class:`StopSignals`, active while :meth:`Trainer.run` trains, only
records that the signal came; the trainer checks after each optimizer step, saves and returns
(``TrainResult.stopped_by``). The first Ctrl-C does the same; a second one, a second or more
later, raises ``KeyboardInterrupt`` at once (a checkpoint being written then is left as a
``.tmp-step-*`` folder, never as ``latest``). Sooner, it is taken for the same Ctrl-C delivered
twice: the terminal signals every process of a torchrun job and torchrun passes its own copy on.
The handlers in place before are restored when the run ends.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# what ``segros train`` exits with after a stop: 128 + the signal, as a shell reports a process the
# signal ended, so `segros train ... && next-step` does not go on with an unfinished run
EXIT_CODES = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 128 + signal.SIGINT}
REPEAT_AFTER = 1.0  # seconds after the first Ctrl-C from which a second one interrupts at once


class StopSignals:
    """Context manager: while active, SIGTERM and SIGINT set :attr:`received` instead of ending
    the process. Installed only from the main thread (Python runs signal handlers there alone)."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._first = 0.0  # time.monotonic() of the first signal
        self._previous: dict[signal.Signals, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            # a forked child (a data-loader worker) inherited this handler: it ignores the signal
            # that reached the whole process group; the run it serves ends it when it stops
            return
        sig = signal.Signals(signum)
        if self.received is None:
            self.received, self._first = sig, time.monotonic()
            log.warning(
                "%s: stopping after this step with a checkpoint%s",
                sig.name,
                " (Ctrl-C again to stop now, without one)" if sig == signal.SIGINT else "",
            )
        elif sig == signal.SIGINT and time.monotonic() - self._first >= REPEAT_AFTER:
            raise KeyboardInterrupt
