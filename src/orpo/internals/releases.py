"""What differs between the transformers releases orpo supports (see ``.ci/floors.txt`` for the oldest).

Every version-dependent touch of a *public* API lives here, detected from the installed package rather
than from its version number; private ``Trainer`` internals stay in :mod:`orpo.internals.private`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

import torch
from accelerate.utils import DistributedType
from transformers import PreTrainedModel, Trainer, TrainingArguments

_TRAINING_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}

#: transformers >= 5.23 names the recompute-in-backward switch ``activation_checkpointing`` (``gradient_checkpointing``
#: becomes its deprecated alias); before, only ``gradient_checkpointing`` exists.  ORPOConfig declares the new
#: fields itself where they are missing, so orpo's flags and YAML keys are the same on every version.
HAS_ACTIVATION_CHECKPOINTING = "activation_checkpointing" in _TRAINING_FIELDS

#: transformers < 5.17 still has ``warmup_ratio`` as a deprecated field copied into ``warmup_steps`` (a float
#: below 1 being a ratio since 5.2).  orpo spells ``warmup_ratio`` as an alias of ``warmup_steps``, so there
#: ORPOConfig hides the old field from the option table.
HAS_WARMUP_RATIO_FIELD = "warmup_ratio" in _TRAINING_FIELDS

#: Newer transformers declare ``fsdp: str | None`` with argparse's ``const=True`` (a bare ``--fsdp`` turns it on);
#: older ones (5.3-5.5) ``list[FSDPOption] | str | None`` without it, though they take ``fsdp=True`` too.  ORPOConfig
#: gives the older field the newer metadata, so ``--fsdp`` and YAML ``fsdp: true`` mean the same everywhere.
FSDP_HAS_CONST = "const" in TrainingArguments.__dataclass_fields__["fsdp"].metadata

#: transformers >= 5.? passes the model to ``Trainer.create_optimizer(model)``; older releases call it bare.
CREATE_OPTIMIZER_TAKES_MODEL = "model" in inspect.signature(Trainer.create_optimizer).parameters

#: Newer transformers read ``Trainer.loss_is_scaled_for_ga``; older ones (5.3-5.5) skip their own division by the
#: accumulation steps only when ``model_accepts_loss_kwargs`` (the loss was normalised by ``num_items_in_batch``).
HAS_LOSS_IS_SCALED_FOR_GA = hasattr(Trainer, "loss_is_scaled_for_ga")

#: Newer transformers convert some checkpoints' weights on load (e.g. MoE experts fused into one tensor) and
#: convert them back on save unless ``save_pretrained(save_original_format=False)``; older ones store what
#: the model holds.
SAVES_ORIGINAL_FORMAT = "save_original_format" in inspect.signature(PreTrainedModel.save_pretrained).parameters


def loss_is_scaled_for_ga(trainer: Any) -> None:
    """Tell ``trainer`` that its loss is already normalised over the whole accumulation window, so neither it
    nor accelerate divides it by the number of micro-batches again.

    Older transformers (5.3-5.5) also create the Accelerator with the accumulation steps, whose ``backward`` then
    divides a second time; newer ones give it 1 and accumulate themselves, as is done here.  DeepSpeed scales
    in its own engine, where the Trainer already turns that off.

    Args:
        trainer: the ``ORPOTrainer``, with its accelerator created; changed in place.
    """
    trainer.loss_is_scaled_for_ga = True
    if not HAS_LOSS_IS_SCALED_FOR_GA:
        trainer.model_accepts_loss_kwargs = True
    accelerator = trainer.accelerator
    if accelerator.gradient_accumulation_steps > 1 and accelerator.distributed_type != DistributedType.DEEPSPEED:
        accelerator.gradient_accumulation_steps = 1


def sync_activation_checkpointing(args: Any) -> None:
    """Where ORPOConfig declares ``activation_checkpointing*`` itself: the new name wins when set, as in
    transformers >= 5.23, and both names end up equal (transformers before it reads only the old one).

    Args:
        args: an ``ORPOConfig``; changed in place (nothing to do on transformers >= 5.23).
    """
    if HAS_ACTIVATION_CHECKPOINTING:
        return
    if args.activation_checkpointing is None:
        args.activation_checkpointing = bool(args.gradient_checkpointing)
    args.gradient_checkpointing = args.activation_checkpointing
    if args.activation_checkpointing_kwargs is None:
        args.activation_checkpointing_kwargs = args.gradient_checkpointing_kwargs
    args.gradient_checkpointing_kwargs = args.activation_checkpointing_kwargs


def enable_activation_checkpointing(model: Any, kwargs: dict[str, Any] | None = None) -> None:
    """``model.activation_checkpointing_enable`` (transformers >= 5.23) or ``gradient_checkpointing_enable``.

    Args:
        model: the model.
        kwargs: the checkpointing options (``activation_checkpointing_kwargs``, e.g. ``use_reentrant``); None: the
            defaults.
    """
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(kwargs)
    else:
        model.gradient_checkpointing_enable(kwargs)


def _restore_indexed_cpu(storage: Any, location: str) -> Any:
    return storage if re.fullmatch(r"cpu:\d+", location) else None


def restore_indexed_cpu_locations() -> None:
    """Let ``torch.load(map_location="cpu:0")`` work: transformers 5.3-5.5 resume a multi-process CPU (gloo) run
    with ``map_location=args.device``, ``cpu:0``, which torch cannot restore; newer releases map to ``cpu``."""
    try:
        torch.serialization.default_restore_location(torch.UntypedStorage(0), "cpu:0")
    except RuntimeError:
        torch.serialization.register_package(100, lambda _storage: None, _restore_indexed_cpu)
