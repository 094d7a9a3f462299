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

    Each field is AutoTrain's spelling of an ``orpo train`` option (named in brackets where it differs).

    Attributes:
        model: the model to fine-tune, a hub id or local folder (``model_name_or_path``).
        project_name: the output folder (``output_dir``).
        data_path: the preference data: a file, folder, glob or hub dataset id (``dataset_name``).
        train_split: the training split, slices allowed (``dataset_train_split``).
        valid_split: the split to evaluate on; None: no evaluation (``dataset_test_split``).
        max_samples: use only the first N training pairs.
        add_eos_token: accepted; orpo always ends completions with EOS.
        block_size: ``max_length``; -1: keep the default.
        model_max_length: ``max_length`` when neither it nor ``block_size`` is given.
        padding: accepted and ignored (batches are right-padded).
        trainer: only ``"orpo"``.
        use_flash_attention_2: ``attn_implementation="flash_attention_2"``.
        attn_implementation: the attention kernel (eager, sdpa, flash_attention_2, flex_attention...).
        log: the trackers to report to (``report_to``).
        disable_gradient_checkpointing: turn activation checkpointing off.
        logging_steps: log every N steps; -1: about 20 points per run.
        eval_strategy: when to evaluate; AutoTrain's ``"epoch"`` applies only with a validation split.
        save_strategy: when to save checkpoints; AutoTrain's ``"epoch"`` applies only with a validation split.
        save_steps: save every N steps (``save_strategy="steps"``).
        save_total_limit: the most checkpoints kept.
        auto_find_batch_size: find a batch size that fits in memory.
        mixed_precision: ``"fp16"`` or ``"bf16"`` (sets ``fp16`` / ``bf16``), or None.
        lr: the initial learning rate (``learning_rate``).
        epochs: training epochs (``num_train_epochs``).
        batch_size: the per-device batch size for training and, unless set, evaluation.
        warmup_ratio: the warmup, as a fraction of the steps (``warmup_steps``).
        gradient_accumulation: micro-batches per update (``gradient_accumulation_steps``).
        optimizer: the optimizer (``optim``).
        scheduler: the learning-rate schedule (``lr_scheduler_type``).
        weight_decay: the optimizer's weight decay.
        max_grad_norm: gradient clipping; 0: none.
        seed: the random seed.
        chat_template: the chat template for conversational data; None: the tokenizer's own.
        quantization: load the base model quantized with bitsandbytes (QLoRA); None: not quantized.
        target_modules: the modules that get LoRA (``lora_target_modules``).
        merge_adapter: after LoRA training, also save the merged model.
        peft: train a LoRA adapter instead of all weights (``use_peft``).
        lora_r: the LoRA rank.
        lora_alpha: the LoRA alpha (scale = alpha / r).
        lora_dropout: dropout on the LoRA input.
        model_ref: DPO's reference model; refused (ORPO uses none).
        dpo_beta: the odds-ratio term's weight (``beta``).
        max_prompt_length: the most prompt tokens.
        max_completion_length: the most tokens of each completion; None: no limit.
        prompt_text_column: the prompt's column; None: ``prompt``.
        text_column: the chosen completion's column (``"text"``: ``chosen``, else ``text``).
        rejected_text_column: the rejected completion's column; None: ``rejected``.
        image_column: the images' column; None: ``images`` or ``image``.
        push_to_hub: push the model to the Hub when it is saved.
        username: the Hub user; with ``push_to_hub`` the repository defaults to ``<username>/<project_name>``.
        token: the Hub token (``hub_token``); never written to ``training_params.json``.
        repo_id: the Hub repository (``hub_model_id``).
        unsloth: not supported.
        distributed_backend: accepted and ignored (use ``accelerate launch`` for several GPUs).

    Raises:
        UsageError: a field orpo cannot honour (``trainer="sft"``, ``model_ref``, ``unsloth``) or a bad value.
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
        """The fields given a value, as one source of the option table."""
        return Source.from_mapping("LLMTrainingParams", self.given(), option_table())

    def resolve(self) -> ResolvedArgs:
        """The run's arguments, by the same conversion as ``orpo train`` with AutoTrain's defaults under them."""
        return resolve(autotrain_defaults(), self.source(), fill=autotrain_fill)

    def to_args(self) -> tuple[ModelArguments, DataArguments, ORPOConfig]:
        """The equivalent (ModelArguments, DataArguments, ORPOConfig)."""
        resolved = self.resolve()
        return resolved.model, resolved.data, resolved.config

    def save(self, output_dir: str | os.PathLike) -> Path:
        """Write the fields, ``token`` left out, to ``output_dir/training_params.json``; returns its path.

        Args:
            output_dir: the run's output folder.
        """
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

    Args:
        values: the settings resolved so far, by option name.

    Returns:
        The settings these defaults add.
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

    Args:
        params: the run's parameters.
        backend: ``"local"`` (``"local-cli"`` and ``"local-ui"`` mean the same here).
        process: AutoTrain's; accepted and unused (the run is always in this process).

    Raises:
        TypeError: ``params`` is not an :class:`LLMTrainingParams`.
        UsageError: another ``backend``.
    """

    def __init__(self, params: LLMTrainingParams, backend: str = "local", process: bool = True) -> None:
        if not isinstance(params, LLMTrainingParams):
            raise TypeError(f"params must be an orpo.LLMTrainingParams, got {type(params).__name__}")
        check_backend(backend)
        self.params = params
        self.backend = backend
        self.process = process

    def create(self, console: bool = True) -> TrainResult:
        """Train now, in this process, and save ``training_params.json`` beside the model.

        Args:
            console: write to the terminal: a progress bar and, at the end, the summary table.
        """

        resolved = self.params.resolve()
        result = run_training(
            resolved.model, resolved.data, resolved.config, console=console, auto_logging=resolved.auto_logging
        )
        self.params.save(result.output_dir)
        return result
