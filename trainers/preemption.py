"""Preemption: SIGTERM / SIGINT finish the current step, then checkpoint.

A preempted TPU VM, Kubernetes and most schedulers send SIGTERM first (and
SIGKILL some seconds later). While a `Preemption` is active, the first
SIGTERM or SIGINT only sets a flag; `callback()` stops ``model.fit`` after
the step in progress, the trainer writes a checkpoint at that step and exits
with `EXIT_STATUS` (75, ``EX_TEMPFAIL`` of sysexits.h: "try again later"),
distinct from success (0), errors (1), bad flags or a refused run directory
(2) and death by a signal (128 + signal number, e.g. 143). Re-running the
same command resumes exactly where it stopped. A second signal acts as if
no handler were installed (SIGINT raises KeyboardInterrupt, SIGTERM kills).

In a multi-process (multi-host JAX) run every process must stop after the
same step, or the others would wait forever in the next step's collectives:
`agree` combines the processes' flags (an all-gather of one integer), and
the trainer calls it at the same points on every process (after each batch
and before each chunk).
"""

from __future__ import annotations

import signal
import threading

import keras
import numpy as np

EXIT_STATUS = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _StopTraining(keras.callbacks.Callback):
    def __init__(self, preemption):
        super().__init__()
        self.preemption = preemption

    def on_train_batch_end(self, batch, logs=None):
        if self.preemption.agree():
            self.model.stop_training = True


class Preemption:
    """A context manager that turns SIGTERM / SIGINT into a graceful stop.

    Args:
        signals: the signals to handle.
        process_count: the processes of a multi-process JAX run (see
            `agree`).
    """

    def __init__(self, signals=SIGNALS, process_count=1):
        self.signals = tuple(signals)
        self.process_count = process_count
        self.received = None  # the first signal's number, in this process
        self.stopping = False  # agreed by all processes
        self._previous = {}

    @property
    def requested(self):
        """Whether this process received a signal."""
        return self.received is not None

    @property
    def signal_name(self):
        if self.requested:
            return signal.Signals(self.received).name
        return "a signal (to another process)" if self.stopping else None

    def agree(self):
        """Whether to stop now: any process received a signal. With several
        processes this is a collective: all must call it at the same point."""
        stop = self.requested
        if self.process_count > 1:
            from jax.experimental import multihost_utils

            flags = multihost_utils.process_allgather(np.array([int(stop)], np.int32))
            stop = bool(np.any(flags))
        self.stopping = self.stopping or stop
        return self.stopping

    def _handle(self, signum, frame):
        # Only set a flag: printing here could re-enter a print in progress.
        if self.received is None:
            self.received = signum
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def callback(self):
        """A Keras callback stopping ``fit`` after the current batch once a
        signal has arrived."""
        return _StopTraining(self)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False
