"""What scoring reads from a model, whatever wraps it: the transformers model under torch.compile, DDP,
accelerate and PEFT (:func:`unwrap`, the one unwrapper), its LM head and the attention it dispatches to.

The bottom of :mod:`orpo.scoring`: layouts, routing, the MoE router loss and the scorer all look at the
model through these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def unwrap(model: torch.nn.Module, to_transformers: bool = False) -> Any:
    """The model inside torch.compile's and DDP's/accelerate's wrappers (``.module``): the one unwrapper.

    With ``to_transformers`` also inside a PEFT model, down to the ``transformers`` model itself
    (what reads and switches ``attn_implementation``); without, a PEFT model stays itself (its
    head and config are the ones that train).

    Args:
        model: the model as the trainer or the caller holds it.
        to_transformers: also unwrap a PEFT model, down to its ``transformers`` model.
    """
    from transformers import PreTrainedModel

    while True:
        if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):  # torch.compile's
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP's, accelerate's
            model = model.module  # type: ignore[assignment]
        else:
            break
    if to_transformers and not isinstance(model, PreTrainedModel) and callable(getattr(model, "get_base_model", None)):
        model = model.get_base_model()  # type: ignore[operator]
    return model


def _config(model: torch.nn.Module) -> Any:
    return getattr(unwrap(model), "config", None)


def output_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The model's LM head if it is a plain Linear we can replicate (not LoRA-wrapped or quantized).

    Args:
        model: the model, wrapped or not; None is returned for one that is not a transformers model.
    """
    get_head: Callable[[], Any] | None = getattr(unwrap(model), "get_output_embeddings", None)
    if get_head is None:  # not a transformers model
        return None
    try:
        head = get_head()
    except (AttributeError, NotImplementedError):
        return None
    if type(head) is not torch.nn.Linear:
        return None
    return head


def attn_implementation_of(model: torch.nn.Module) -> str | None:
    """The attention the model dispatches to now (orpo's per-segment ones included).

    Args:
        model: the model, wrapped or not (PEFT included).
    """
    from orpo.internals.private import attn_implementation  # imports transformers' Trainer: not at import time

    return attn_implementation(getattr(unwrap(model, to_transformers=True), "config", None))
