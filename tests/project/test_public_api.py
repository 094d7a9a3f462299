"""What a user sees is the same before and after the package was reorganised: the public names of ``orpo``,
the console scripts, the commands, the shipped recipes and launch configs (new ones may be added here)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import orpo

ROOT = Path(__file__).resolve().parents[2]

PUBLIC = [
    "AutoTrainProject", "CheckpointError", "DataArguments", "LLMTrainingParams", "METRIC_NAMES", "ModelArguments",
    "NonFiniteError", "ORPOConfig", "ORPOTrainer", "ResolvedArgs", "TrainResult", "TrainingInterrupted",
    "__version__", "log1mexp", "odds_ratio_loss", "orpo_loss", "run_training", "sequence_logps",
]  # fmt: skip


def test_the_public_names_of_orpo():
    assert sorted(orpo.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(orpo, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from orpo import {', '.join(PUBLIC)}", namespace)  # the import users write
    assert all(name in namespace for name in PUBLIC)


def test_the_console_scripts_and_commands():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts == {"orpo": "orpo.cli:main", "aitraining": "orpo.cli:aitraining_main"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))
    from orpo.cli.main import COMMANDS

    assert list(COMMANDS) == ["train", "generate", "chat", "merge", "data", "plot", "eval", "config", "env", "demo"]


def test_the_shipped_recipes_and_launch_configs():
    from orpo.config.shipped import launch_names, recipe_names

    assert {"autotrain-gemma-orpo", "mistral-7b-full", "mistral-7b-qlora", "qwen2-0.5b-lora"} <= set(recipe_names())
    assert "zephyr-141b-orpo" in recipe_names()
    assert {"ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp", "zero2", "zero3"} <= set(launch_names())
