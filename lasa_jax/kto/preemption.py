"""SIGTERM as a request to stop after the current step (preemption of a TPU VM; the KTO loop saves and exits)."""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class PreemptionSignal:
    """Context manager: SIGTERM sets `received` instead of killing the process (main thread only; the handler only
    sets the flag, the training loop acts on it)."""

    def __init__(self):
        self.received = False
        self._installed = False
        self._previous = None

    def _handle(self, signum, frame):
        self.received = True

    def __enter__(self) -> PreemptionSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)

    def any_process(self) -> bool:
        """Whether any process received SIGTERM (all processes must save the same step together)."""
        if jax.process_count() == 1:
            return self.received
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(self.received))))

