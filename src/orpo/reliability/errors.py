"""The exceptions a training run raises when it stops to protect the weights or the user's time."""

from __future__ import annotations

import signal


class NonFiniteError(RuntimeError):
    """A loss or gradient was NaN/inf; the optimizer update was not applied."""


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
