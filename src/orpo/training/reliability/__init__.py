"""Reliability for ``ORPOTrainer``: atomic checkpoints, exact resume, signals, non-finite guard.

Objects the trainer owns, each with its dependencies passed in, connected to ``Trainer``'s loop
by one callback (:mod:`~orpo.training.reliability.loop_hooks`):

* **Atomic checkpoints** (:mod:`~orpo.training.reliability.commit`, files checked by :mod:`orpo.training.reliability.checkpoint`):
  written to ``tmp-checkpoint-<step>``, verified, described by a manifest of sizes and SHA-256
  hashes, then renamed; a failed save (a full disk included) is one line naming the checkpoint, the
  cause, the last complete checkpoint and the resume command.  ``resume_from_checkpoint=True``
  resumes from the newest checkpoint that still verifies and warns about every newer one it skips
  (:mod:`~orpo.training.reliability.resume`); :mod:`~orpo.training.reliability.fit` checks that it fits the run
  (adapter or full, the same model) and warns when data or settings changed since it was written.
* **Exact resume**: besides what ``Trainer`` saves (weights, optimizer, scheduler, RNG, data
  position), each checkpoint stores the not-yet-logged loss and metric sums of every process
  (:class:`~orpo.training.reliability.resume.LoopState`), so the first logs after a resume equal the
  uninterrupted run's.
* **SIGINT/SIGTERM** (:mod:`~orpo.training.reliability.signals`): the current optimizer step finishes, a
  resumable checkpoint is saved and :class:`TrainingInterrupted` (a ``SystemExit`` with code
  128 + signal number) is raised.  The same signal again stops at once, saying so.
* **Non-finite guard** (:mod:`~orpo.training.reliability.guard`, ``ORPOConfig.on_nonfinite``): before every
  optimizer update the window's losses and gradient norm are checked (agreed across processes), on the
  device: the update is held back there and the flags read on the host at a logging step or one step late.
  ``"error"`` raises :class:`NonFiniteError` naming the step, the micro-batch, the dataset rows and
  the parameters (:mod:`~orpo.training.reliability.diagnose`); ``"skip"`` holds the update back
  (:mod:`~orpo.training.reliability.optimizer`), logs why, and counts ``skipped_batches`` in the logs.
* **Clear errors before training** (:mod:`~orpo.training.reliability.preflight`): settings that would train
  nothing, an output dir that cannot be written (or sits on a full disk), or a dataset smaller than
  one batch with ``dataloader_drop_last``.

What this relies on in ``Trainer`` beyond its public API is in :mod:`~orpo.internals.private`.
"""

from orpo.training.reliability.checkpoint import CheckpointError
from orpo.training.reliability.diagnose import ROW_INDEX_COLUMN
from orpo.training.reliability.preflight import check_output_dir
from orpo.training.reliability.stops import NonFiniteError, TrainingInterrupted

__all__ = [
    "ROW_INDEX_COLUMN",
    "CheckpointError",
    "NonFiniteError",
    "TrainingInterrupted",
    "check_output_dir",
]
