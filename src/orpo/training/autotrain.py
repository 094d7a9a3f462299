"""AutoTrain's interface to ORPO: ``LLMTrainingParams`` and ``AutoTrainProject`` (``aitraining llm`` is in
:mod:`orpo.cli.aitraining`).

Field names and defaults are those of AutoTrain's LLM trainer (``autotrain.trainers.clm.params``) so its
documented ORPO Quick Start and Python API run unchanged.  Every field name is a spelling of the option
table (a field, an alias or a switch), so :meth:`LLMTrainingParams.resolve` is :func:`orpo.config.resolve.resolve`
on two sources: AutoTrain's defaults, then the fields given a value other than their default.  What
AutoTrain maps differently from ``orpo train`` is only its defaults (:func:`autotrain_defaults`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orpo.config.options import Source, option_table
from orpo.config.resolve import ResolvedArgs, resolve
from orpo.config.switches import check_backend
from orpo.training.run import run_training

if TYPE_CHECKING:
    from orpo.config.arguments import DataArguments, ModelArguments
    from orpo.config.orpo_config import ORPOConfig
    from orpo.training.run import TrainResult

#: AutoTrain's defaults that mean "orpo decides" rather than a value: ``text_column="text"`` (the chosen
#: column is then ``chosen``, else ``text``), and evaluation and saving per epoch (only with a validation
#: split, see :func:`autotrain_fill`).
DECIDED_BY_ORPO = ("text_column", "eval_strategy", "save_strategy")


@dataclass
class LLMTrainingParams:
    """AutoTrain's ``LLMTrainingParams`` (the LLM trainer's parameters), for ORPO.

    Field names and defaults are AutoTrain's (``autotrain.trainers.clm.params``), except:
    ``trainer`` defaults to ``"orpo"`` (the only trainer here) and ``log`` to ``"none"`` (no
    tracker is installed by default).  Fields for other trainers (SFT, DPO's ``model_ref``,
    PPO, distillation, sweeps) are not here; passing one is an error.
    """

    model: str = "google/gemma-3-270m"
    project_name: str = "project-name"

    # data
    data_path: str = "data"
    train_split: str = "train"
    valid_split: str | None = None
    max_samples: int | None = None
    add_eos_token: bool = True
    block_size: int = -1
    model_max_length: int = 2048
    padding: str | None = "right"

    # trainer
    trainer: str = "orpo"
    use_flash_attention_2: bool = False
    attn_implementation: str | None = None
    log: str = "none"
    disable_gradient_checkpointing: bool = False
    logging_steps: int = -1
    eval_strategy: str = "epoch"
    save_strategy: str = "epoch"
    save_steps: int = 500
    save_total_limit: int = 1
    auto_find_batch_size: bool = False
    mixed_precision: str | None = None
    lr: float = 3e-5
    epochs: int = 1
    batch_size: int = 2
    warmup_ratio: float = 0.1
    gradient_accumulation: int = 4
    optimizer: str = "adamw_torch"
    scheduler: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    chat_template: str | None = None

    # peft
    quantization: str | None = None
    target_modules: str | None = "all-linear"
    merge_adapter: bool = True
    peft: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05

    # dpo / orpo
    model_ref: str | None = None
    dpo_beta: float = 0.1
    max_prompt_length: int = 128
    max_completion_length: int | None = None

    # columns
    prompt_text_column: str | None = None
    text_column: str = "text"
    rejected_text_column: str | None = None
    image_column: str | None = None

    # hub
    push_to_hub: bool = False
    username: str | None = None
    token: str | None = None
    repo_id: str | None = None

    # not supported here, accepted so configs port
    unsloth: bool = False
    distributed_backend: str | None = None

    def __post_init__(self) -> None:
        self.source().values()  # refuses now what orpo cannot do (trainer="sft", model_ref, bad values)

    def given(self) -> dict[str, Any]:
        """The fields set to something other than AutoTrain's default."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}

    def source(self) -> Source:
        return Source.from_mapping("LLMTrainingParams", self.given(), option_table())

    def resolve(self) -> ResolvedArgs:
        """The run's arguments, by the same conversion as ``orpo train`` with AutoTrain's defaults under them."""
        return resolve(autotrain_defaults(), self.source(), fill=autotrain_fill)

    def to_args(self) -> tuple[ModelArguments, DataArguments, ORPOConfig]:
        """The equivalent (ModelArguments, DataArguments, ORPOConfig)."""
        resolved = self.resolve()
        return resolved.model, resolved.data, resolved.config

    def save(self, output_dir: str | os.PathLike) -> Path:
        path = Path(output_dir) / "training_params.json"
        values = dataclasses.asdict(self)
        values.pop("token", None)
        path.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
        return path


def autotrain_defaults() -> Source:
    """AutoTrain's defaults as a source: ``LLMTrainingParams``' field defaults but :data:`DECIDED_BY_ORPO`."""
    defaults = {f.name: f.default for f in dataclasses.fields(LLMTrainingParams) if f.name not in DECIDED_BY_ORPO}
    return Source.from_mapping("AutoTrain's defaults", defaults, option_table())


def autotrain_fill(values: Mapping[str, Any]) -> dict[str, Any]:
    """AutoTrain's defaults that depend on other settings (as its ``configure_training_args`` does).

    Evaluation per epoch, and saving with it, only when there is a validation split (no saving without one);
    the best model loaded at the end when both happen on the same schedule; non-reentrant activation
    checkpointing.
    """
    has_valid = values.get("dataset_test_split") is not None
    evaluation = values.get("eval_strategy", "epoch" if has_valid else "no")
    saving = values.get("save_strategy", evaluation if has_valid else "no")
    out: dict[str, Any] = {
        "eval_strategy": evaluation,
        "save_strategy": saving,
        "load_best_model_at_end": has_valid and saving == evaluation != "no",
    }
    if values.get("activation_checkpointing"):
        out["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    return out


class AutoTrainProject:
    """AutoTrain's ``AutoTrainProject``: ``AutoTrainProject(params=..., backend="local").create()``.

    Only the ``local`` backend exists here: ``create()`` trains in this process, writes the
    model, ``training_curves.png``, ``training_summary.json`` and ``training_params.json`` to
    ``params.project_name`` and returns the :class:`TrainResult`.
    """

    def __init__(self, params: LLMTrainingParams, backend: str = "local", process: bool = True) -> None:
        if not isinstance(params, LLMTrainingParams):
            raise TypeError(f"params must be an orpo.LLMTrainingParams, got {type(params).__name__}")
        check_backend(backend)
        self.params = params
        self.backend = backend
        self.process = process

    def create(self, console: bool = True) -> TrainResult:

        resolved = self.params.resolve()
        result = run_training(
            resolved.model, resolved.data, resolved.config, console=console, auto_logging=resolved.auto_logging
        )
        self.params.save(result.output_dir)
        return result
