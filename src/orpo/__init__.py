"""orpo: exact, numerically safe, fast ORPO fine-tuning for language models."""

from .autotrain import AutoTrainProject, LLMTrainingParams
from .config import ORPOConfig
from .loss import log1mexp, odds_ratio_loss, orpo_loss, sequence_logps
from .reliability import CheckpointError, NonFiniteError, TrainingInterrupted
from .trainer import METRIC_NAMES, ORPOTrainer

__version__ = "0.1.0"

__all__ = [
    "METRIC_NAMES",
    "AutoTrainProject",
    "CheckpointError",
    "LLMTrainingParams",
    "NonFiniteError",
    "ORPOConfig",
    "ORPOTrainer",
    "TrainingInterrupted",
    "__version__",
    "log1mexp",
    "odds_ratio_loss",
    "orpo_loss",
    "sequence_logps",
]
