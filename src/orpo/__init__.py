"""orpo: exact, numerically safe, fast ORPO fine-tuning for language models."""

from .config import ORPOConfig
from .loss import log1mexp, odds_ratio_loss, orpo_loss, sequence_logps
from .trainer import METRIC_NAMES, ORPOTrainer

__version__ = "0.1.0"

__all__ = [
    "METRIC_NAMES",
    "ORPOConfig",
    "ORPOTrainer",
    "__version__",
    "log1mexp",
    "odds_ratio_loss",
    "orpo_loss",
    "sequence_logps",
]
