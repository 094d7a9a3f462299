"""Reliability for ``ORPOTrainer``: atomic checkpoints, exact resume, signals, non-finite guard.

:class:`ReliabilityMixin` sits between ``ORPOTrainer`` and ``transformers.Trainer`` and adds:

* **Atomic checkpoints** (:mod:`orpo.checkpoint`): written to ``tmp-checkpoint-<step>``,
  verified, described by a manifest of sizes and SHA-256 hashes, then renamed.
  ``resume_from_checkpoint=True`` resumes from the newest checkpoint that still verifies and
  warns about every newer one it skips.
* **Exact resume**: besides what ``Trainer`` saves (weights, optimizer, scheduler, RNG, data
  position), each checkpoint stores the not-yet-logged loss and metric sums of every process,
  so the first logs after a resume equal the uninterrupted run's.
* **SIGINT/SIGTERM**: the current optimizer step finishes, a resumable checkpoint is saved
  and :class:`TrainingInterrupted` (a ``SystemExit`` with code 128 + signal number) is raised:
  a script that does not catch it exits cleanly.  The same signal again stops at once.
* **Non-finite guard** (``ORPOConfig.on_nonfinite``): before every optimizer update the
  window's losses and the gradient norm are checked (agreed across processes).  ``"error"``
  raises :class:`NonFiniteError` naming the step, the micro-batch, the dataset rows and the
  parameters; ``"skip"`` drops the update, logs why, and counts ``skipped_batches`` in the logs.
* **Clear errors before training**: an output dir that cannot be written, or a dataset smaller
  than one batch with ``dataloader_drop_last``.
"""

from ..checkpoint import CheckpointError
from .diagnose import ROW_INDEX_COLUMN
from .guard import NonFiniteError
from .mixin import ReliabilityMixin
from .preflight import check_output_dir
from .resume import TRAINER_STATE_NAME
from .signals import TrainingInterrupted

# Tracebacks and pickles name the documented path, as before the split into modules.
NonFiniteError.__module__ = TrainingInterrupted.__module__ = __name__

__all__ = [
    "ROW_INDEX_COLUMN",
    "TRAINER_STATE_NAME",
    "CheckpointError",
    "NonFiniteError",
    "ReliabilityMixin",
    "TrainingInterrupted",
    "check_output_dir",
]
