"""What differs between the transformers releases orpo supports (see ``.ci/floors.txt`` for the oldest).

Every version-dependent touch of a *public* API lives here, detected from the installed package rather
than from its version number; private ``Trainer`` internals stay in :mod:`orpo.internals`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from transformers import Trainer, TrainingArguments

_TRAINING_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}

#: transformers >= 5.23 names the recompute-in-backward switch ``activation_checkpointing`` (``gradient_checkpointing``
#: becomes its deprecated alias); before, only ``gradient_checkpointing`` exists.  ORPOConfig declares the new
#: fields itself where they are missing, so orpo's flags and YAML keys are the same on every version.
HAS_ACTIVATION_CHECKPOINTING = "activation_checkpointing" in _TRAINING_FIELDS

#: transformers < 5.17 still has ``warmup_ratio`` as a deprecated field copied into ``warmup_steps`` (a float
#: below 1 being a ratio since 5.2).  orpo spells ``warmup_ratio`` as an alias of ``warmup_steps``, so there
#: ORPOConfig hides the old field from the option table.
HAS_WARMUP_RATIO_FIELD = "warmup_ratio" in _TRAINING_FIELDS

#: transformers >= 5.? passes the model to ``Trainer.create_optimizer(model)``; older releases call it bare.
CREATE_OPTIMIZER_TAKES_MODEL = "model" in inspect.signature(Trainer.create_optimizer).parameters


def sync_activation_checkpointing(args: Any) -> None:
    """Where ORPOConfig declares ``activation_checkpointing*`` itself: the new name wins when set, as in
    transformers >= 5.23, and both names end up equal (transformers before it reads only the old one)."""
    if HAS_ACTIVATION_CHECKPOINTING:
        return
    if args.activation_checkpointing is None:
        args.activation_checkpointing = bool(args.gradient_checkpointing)
    args.gradient_checkpointing = args.activation_checkpointing
    if args.activation_checkpointing_kwargs is None:
        args.activation_checkpointing_kwargs = args.gradient_checkpointing_kwargs
    args.gradient_checkpointing_kwargs = args.activation_checkpointing_kwargs


def enable_activation_checkpointing(model: Any, kwargs: dict[str, Any] | None = None) -> None:
    """``model.activation_checkpointing_enable`` (transformers >= 5.23) or ``gradient_checkpointing_enable``."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(kwargs)
    else:
        model.gradient_checkpointing_enable(kwargs)
