"""A check of the ``report_to`` trackers before any data preparation: without it a missing tracker package
fails only when the Trainer is built, after the data has been read and tokenised.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from orpo.config.usage import UsageError

#: tracker -> (modules any one of which provides it (transformers' own test), what to install)
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install 'orpo[tensorboard]'"),
    "wandb": (("wandb",), "pip install 'orpo[wandb]'"),
    "mlflow": (("mlflow",), "pip install mlflow"),
    "comet_ml": (("comet_ml",), "pip install comet_ml"),
    "clearml": (("clearml",), "pip install clearml"),
    "neptune": (("neptune",), "pip install neptune"),
    "dvclive": (("dvclive",), "pip install dvclive"),
    "codecarbon": (("codecarbon",), "pip install codecarbon"),
    "swanlab": (("swanlab",), "pip install swanlab"),
    "trackio": (("trackio",), "pip install trackio"),
}


def check_trackers(report_to: str | Iterable[str] | None) -> None:
    """Raise a one-line :class:`UsageError` for the first chosen tracker whose package is missing."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        modules, install = TRACKERS.get(name, ((), ""))
        if modules and not any(importlib.util.find_spec(module) for module in modules):
            raise UsageError(f"--report-to {name}: the {modules[0]} package is not installed; {install}")
