"""The exceptions a training run raises when it stops to protect the weights or the user's time."""

from __future__ import annotations

import signal


def resume_advice(command: str | None) -> str:
    """How to continue a stopped run, in the terms it was started in: the command line that resumes it
    (set by ``orpo train``), else the Python call.

    Args:
        command: the command line that resumes the run, or None.
    """
    if command:
        return f"resume with: {command}"
    return "resume with trainer.train(resume_from_checkpoint=True) and the same output_dir"


class NonFiniteError(RuntimeError):
    """A loss or gradient was NaN/inf; the optimizer update was not applied."""


class TrainingInterrupted(SystemExit):
    """Training stopped on SIGINT/SIGTERM: after saving a resumable checkpoint, or at once on a second signal
    (``global_step`` None; ``checkpoint`` is then the last complete one, if any).

    A ``SystemExit``: left uncaught, the process exits with code ``128 + signum`` (130 for
    SIGINT, 143 for SIGTERM) and no traceback.

    Args:
        signum: the signal's number.
        global_step: the step the run stopped after; None: stopped at once, by a second signal.
        checkpoint: the checkpoint saved (or the last complete one), or None.
    """

    def __init__(self, signum: int, global_step: int | None, checkpoint: str | None) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.global_step = global_step
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.global_step is None:
            return f"training stopped at once by a second {name}; last complete checkpoint: {self.checkpoint}"
        return f"training interrupted by {name} at step {self.global_step}; checkpoint: {self.checkpoint}"
