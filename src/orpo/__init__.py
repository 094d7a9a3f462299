"""orpo: exact, numerically safe, fast ORPO fine-tuning for language models.

The names below are imported on first use (PEP 562), so ``import orpo.loss`` does not load the trainer
and ``orpo --help`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it (the conversion itself is ``orpo.config.resolve.resolve``: a name
#: ``resolve`` here would be shadowed by the submodule)
_WHERE = {
    "AutoTrainProject": "training.autotrain",
    "LLMTrainingParams": "training.autotrain",
    "DataArguments": "config.arguments",
    "ModelArguments": "config.arguments",
    "ORPOConfig": "config.orpo_config",
    "log1mexp": "loss",
    "odds_ratio_loss": "loss",
    "orpo_loss": "loss",
    "sequence_logps": "loss",
    "CheckpointError": "training.reliability",
    "NonFiniteError": "training.reliability",
    "TrainingInterrupted": "training.reliability",
    "ResolvedArgs": "config.resolve",
    "TrainResult": "training.run",
    "run_training": "training.run",
    "METRIC_NAMES": "training.metrics",
    "ORPOTrainer": "training.trainer",
}

__all__ = [
    "METRIC_NAMES",
    "AutoTrainProject",
    "CheckpointError",
    "DataArguments",
    "LLMTrainingParams",
    "ModelArguments",
    "NonFiniteError",
    "ORPOConfig",
    "ORPOTrainer",
    "ResolvedArgs",
    "TrainResult",
    "TrainingInterrupted",
    "__version__",
    "log1mexp",
    "odds_ratio_loss",
    "orpo_loss",
    "run_training",
    "sequence_logps",
]

if TYPE_CHECKING:
    from orpo.config.arguments import DataArguments, ModelArguments
    from orpo.config.orpo_config import ORPOConfig
    from orpo.config.resolve import ResolvedArgs
    from orpo.loss import log1mexp, odds_ratio_loss, orpo_loss, sequence_logps
    from orpo.training.autotrain import AutoTrainProject, LLMTrainingParams
    from orpo.training.metrics import METRIC_NAMES
    from orpo.training.reliability import CheckpointError, NonFiniteError, TrainingInterrupted
    from orpo.training.run import TrainResult, run_training
    from orpo.training.trainer import ORPOTrainer


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'orpo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
