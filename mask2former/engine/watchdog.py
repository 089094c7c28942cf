"""
A stalled data loader is reported instead of hanging the job (``DATALOADER.TIMEOUT`` seconds, 0 = off).

:class:`DataStallWatchdog` times every ``next(data_loader)`` of the training loop from a helper thread.
When one takes longer than the timeout it logs an error naming the rank, the iteration and the config key,
dumps every thread's stack to stderr (where the data loader is stuck), and raises
:class:`DataLoaderStallError` in the main thread through a signal (SIGUSR1). If the main thread is stuck
in native code that never returns to Python, the process exits with status 3 after a grace period, so a
distributed launcher sees a failed rank and ends the job.
"""
import faulthandler
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager

__all__ = ["DataLoaderStallError", "DataStallWatchdog", "STALL_EXIT_CODE"]

logger = logging.getLogger(__name__)

STALL_EXIT_CODE = 3
GRACE_SECONDS = 10.0


class DataLoaderStallError(RuntimeError):
    """The data loader produced no batch within ``DATALOADER.TIMEOUT`` seconds."""


class DataStallWatchdog:
    def __init__(self, timeout: float, rank: int = 0):
        self.timeout, self.rank = float(timeout), rank
        self._message = None
        self._previous_handler = None

    def _on_signal(self, signum, frame):
        if self._message is not None:
            raise DataLoaderStallError(self._message)

    def _watch(self, iteration: int, finished: threading.Event) -> None:
        if finished.wait(self.timeout):
            return
        self._message = (
            f"The training data loader of rank {self.rank} produced no batch for {self.timeout:g} s at iteration "
            f"{iteration} (DATALOADER.TIMEOUT); the stacks of all threads are printed above."
        )
        logger.error(self._message)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
        if not finished.wait(GRACE_SECONDS):
            sys.stderr.write(self._message + f" Exiting with status {STALL_EXIT_CODE}.\n")
            sys.stderr.flush()
            os._exit(STALL_EXIT_CODE)

    @contextmanager
    def watch(self, iteration: int):
        """Time the body (one ``next(data_loader)``); no-op when the timeout is 0 or off the main thread."""
        if self.timeout <= 0 or threading.current_thread() is not threading.main_thread():
            yield
            return
        if self._previous_handler is None:
            self._previous_handler = signal.signal(signal.SIGUSR1, self._on_signal)
        finished = threading.Event()
        thread = threading.Thread(target=self._watch, args=(iteration, finished), daemon=True,
                                  name="data-stall-watchdog")
        thread.start()
        try:
            yield
        finally:
            finished.set()
