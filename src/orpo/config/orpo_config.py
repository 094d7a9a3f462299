"""``ORPOConfig``: ``transformers.TrainingArguments`` plus ORPO's fields, TRL's names and defaults."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from transformers import TrainingArguments
from transformers.trainer_utils import FSDPOption, SchedulerType
from transformers.training_args import OptimizerNames

from orpo.config.arguments import ORPOArguments, aliases
from orpo.config.rules import ANY_FINITE, Range
from orpo.internals import releases

_SEED = Range(ge=0, le=2**32 - 1)  # numpy's seed range (transformers.set_seed seeds numpy too)

#: The range of each numeric field of ``TrainingArguments`` (orpo does not own their metadata, so they are
#: declared here, once; orpo's own fields declare theirs in their metadata).  Values that are in range but
#: train nothing (``learning_rate`` 0, ``max_steps`` 0, ``num_train_epochs`` 0) are refused by
#: ``orpo.training.reliability.preflight`` with the reason.
TRAINING_RULES: dict[str, Range] = {
    "per_device_train_batch_size": Range(ge=1),
    "per_device_eval_batch_size": Range(ge=1),
    "gradient_accumulation_steps": Range(ge=1),
    "eval_accumulation_steps": Range(ge=1),
    "num_train_epochs": Range(ge=0),
    "max_steps": Range(ge=-1, note="-1: num_train_epochs decides"),
    "learning_rate": Range(ge=0),
    "warmup_steps": Range(ge=0),
    "weight_decay": Range(ge=0),
    "adam_beta1": Range(ge=0, lt=1),
    "adam_beta2": Range(ge=0, lt=1),
    "adam_epsilon": Range(ge=0),
    "max_grad_norm": Range(ge=0, note="0: no clipping"),
    "label_smoothing_factor": Range(ge=0, le=1),
    "neftune_noise_alpha": Range(ge=0),
    "torch_empty_cache_steps": Range(ge=1),
    "logging_steps": Range(note="below 0: about 20 points per run"),
    "eval_steps": Range(gt=0),
    "eval_delay": Range(ge=0),
    "save_steps": Range(gt=0),
    "save_total_limit": ANY_FINITE,  # None or <= 0: keep every checkpoint
    "seed": _SEED,
    "data_seed": _SEED,
    "dataloader_num_workers": Range(ge=0),
    "dataloader_prefetch_factor": Range(ge=1),
    "ddp_bucket_cap_mb": Range(ge=1),
    "ddp_timeout": Range(ge=1),
    "local_rank": ANY_FINITE,  # set by launchers; -1: not distributed
}


def _named(name: str, *names: str) -> dict[str, Any]:
    """``TrainingArguments``' metadata (help) for ``name``, with other tools' names for it as aliases."""
    return {**TrainingArguments.__dataclass_fields__[name].metadata, "aliases": aliases(*names)}


@dataclass
class ORPOConfig(ORPOArguments, TrainingArguments):
    """Training arguments for :class:`orpo.ORPOTrainer`.

    Field names and defaults of TRL's ``ORPOConfig`` are kept so scripts port by changing the
    import (ORPO's fields are declared in :class:`orpo.config.arguments.ORPOArguments`).  Every field is
    also an ``orpo train`` flag and a YAML key.  The fields re-declared below are
    ``TrainingArguments``' own, given their AutoTrain names as aliases (``--lr``, ``--epochs``...).
    """

    #: the ranges of TrainingArguments' fields (read by orpo.config.values.field_metadata)
    inherited_rules: ClassVar[dict[str, Range]] = TRAINING_RULES

    # TRL's defaults that differ from TrainingArguments.
    learning_rate: float = field(
        default=1e-6, metadata={"help": "The initial learning rate (TRL's ORPO default).", "aliases": aliases("lr")}
    )
    logging_steps: float = field(
        default=10,
        metadata={
            "help": "Log every X update steps (an integer, or a ratio of the total steps if below 1; -1: about "
            "20 points per run, AutoTrain's auto)."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept for compatibility; orpo always keeps the columns it needs."}
    )

    # TrainingArguments' own fields and defaults, with AutoTrain's names (tested to match transformers').
    output_dir: str | None = field(default=None, metadata=_named("output_dir", "project_name"))
    num_train_epochs: float = field(default=3.0, metadata=_named("num_train_epochs", "epochs"))
    per_device_eval_batch_size: int = field(default=8, metadata=_named("per_device_eval_batch_size", "eval_batch_size"))
    gradient_accumulation_steps: int = field(
        default=1, metadata=_named("gradient_accumulation_steps", "gradient_accumulation")
    )
    warmup_steps: float = field(default=0, metadata=_named("warmup_steps", "warmup_ratio"))
    lr_scheduler_type: SchedulerType | str = field(default="linear", metadata=_named("lr_scheduler_type", "scheduler"))
    # transformers' default from torch 2.8, kept on older torch too: there transformers falls back to the plain
    # AdamW, whose float16 state goes non-finite on float16 parameters (tests/training/test_trl_parity.py).
    optim: OptimizerNames | str = field(default="adamw_torch_fused", metadata=_named("optim", "optimizer"))
    # transformers' own order of the union: HfArgumentParser relies on it.
    report_to: None | str | list[str] = field(default="none", metadata=_named("report_to", "log"))  # noqa: RUF036
    hub_model_id: str | None = field(default=None, metadata=_named("hub_model_id", "repo_id"))
    hub_token: str | None = field(default=None, metadata=_named("hub_token", "token"))

    # Fields that only some transformers releases have, declared so every release takes the same options
    # (orpo.internals.releases says which and why).
    if not releases.HAS_ACTIVATION_CHECKPOINTING:
        activation_checkpointing: bool | None = field(
            default=None,
            metadata={
                "help": "Recompute activations in the backward pass to save memory "
                "(transformers' gradient_checkpointing)."
            },
        )
        activation_checkpointing_kwargs: dict[str, Any] | str | None = field(
            default=None,
            metadata={"help": "Keyword arguments for gradient_checkpointing_enable() (transformers' own name)."},
        )
    if not releases.FSDP_HAS_CONST:
        # transformers 5.3-5.5's own type (mypy sees the newer one).
        fsdp: list[FSDPOption] | str | None = field(  # type: ignore[assignment,unused-ignore]
            default=None,
            metadata={**TrainingArguments.__dataclass_fields__["fsdp"].metadata, "nargs": "?", "const": True},
        )
    if releases.HAS_WARMUP_RATIO_FIELD:
        warmup_ratio: float | None = field(default=None, init=False, repr=False)  # spelled as warmup_steps

    def __post_init__(self) -> None:
        self.check_orpo_fields()
        releases.sync_activation_checkpointing(self)
        super().__post_init__()


def resolve_config(args: TrainingArguments | None, model: Any) -> ORPOConfig:
    """The trainer's own copy of the caller's config, which stays as given.

    An ``ORPOConfig`` is copied (its dicts and lists too) without re-running ``__post_init__``; a
    ``TrainingArguments`` becomes an ``ORPOConfig`` of its values.  ``remove_unused_columns`` is off:
    the collators pick their columns, and the reports need the row index, which is no model input.
    """
    if args is None:
        name = model if isinstance(model, str) else type(model).__name__ if model is not None else "model"
        resolved = ORPOConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1]}-ORPO")
    elif isinstance(args, ORPOConfig):
        resolved = copy.copy(args)
        for field in dataclasses.fields(args):
            setattr(resolved, field.name, copy.deepcopy(getattr(args, field.name)))
    else:
        names = {f.name for f in dataclasses.fields(ORPOConfig) if f.init}
        resolved = ORPOConfig(
            **{f.name: copy.deepcopy(getattr(args, f.name)) for f in dataclasses.fields(args) if f.name in names}
        )
    resolved.remove_unused_columns = False
    return resolved
