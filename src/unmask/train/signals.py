"""Stopping a training run from outside keeps its work: the signals that end jobs stop it as Ctrl-C does.

``kill``, ``timeout``, a batch scheduler's preemption and a container's stop send SIGTERM; schedulers
warn with SIGUSR1 (Slurm's ``--signal``) or SIGHUP before it. Python's default for these ends the process
on the spot, without the checkpoint Ctrl-C writes. While :func:`stop_signals` is active they raise
:class:`Stopped`, a ``KeyboardInterrupt``, where the process is: the training loop saves the step it
reached and the command exits 128 + the signal's number. A second such signal while that save runs is
ignored, so the save completes (a scheduler that will not wait sends SIGKILL, which nothing can catch).

A worker of a multi-process job keeps the defaults: its launcher stops every worker alike and resumes
from the last complete checkpoint (:mod:`unmask.distributed.launch`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop signal arrived; ``signum`` is its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGTERM, SIGUSR1 and SIGHUP raise :class:`Stopped` (in a single process, on the main
    thread: the only one Python delivers signals to); the previous handlers come back after it."""
    if threading.current_thread() is not threading.main_thread() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        yield
        return

    def stop(signum: int, _frame) -> None:
        for other in STOP_SIGNALS:  # the save that follows is not cut short by the next one
            signal.signal(other, signal.SIG_IGN)
        raise Stopped(signum)

    previous = {number: signal.signal(number, stop) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
