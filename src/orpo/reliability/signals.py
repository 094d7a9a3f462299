"""SIGINT/SIGTERM: finish the current optimizer step, save a resumable checkpoint, then stop."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any

logger = logging.getLogger(__package__)  # "orpo.reliability", as before the split

_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


class TrainingInterrupted(SystemExit):
    """Training stopped on SIGINT/SIGTERM after saving a resumable checkpoint.

    A ``SystemExit``: left uncaught, the process exits with code ``128 + signum`` (130 for
    SIGINT, 143 for SIGTERM) and no traceback.
    """

    def __init__(self, signum: int, global_step: int, checkpoint: str | None) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.global_step = global_step
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return (
            f"training interrupted by {signal.Signals(self.signum).name} at step {self.global_step}; "
            f"checkpoint: {self.checkpoint}"
        )


class SignalMixin:
    """Installs the handlers for the length of ``train()``; the step guard acts on ``_stop_signal``."""

    #: Set to False before ``train()`` to leave SIGINT/SIGTERM to their usual handlers.
    handle_signals: bool = True

    _stop_signal: int | None

    @contextlib.contextmanager
    def _signal_guard(self) -> Any:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[int, Any] = {}

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

        def handler(signum: int, _frame: Any) -> None:
            name = signal.Signals(signum).name
            if self._stop_signal is None:
                self._stop_signal = signum
                logger.warning(
                    "received %s: finishing the current step, then saving a checkpoint and stopping "
                    "(send %s again to stop at once)",
                    name,
                    name,
                )
            elif signum == self._stop_signal:
                logger.warning("received %s again: stopping now without a checkpoint", name)
                restore()
                signal.raise_signal(signum)
            else:  # e.g. torchrun's SIGTERM after a Ctrl-C: already stopping
                logger.info("received %s while already stopping; ignored", name)

        for signum in _SIGNALS:
            previous[signum] = signal.signal(signum, handler)
        try:
            yield
        finally:
            restore()
