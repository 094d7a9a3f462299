"""Which per-segment attention runs a row layout on a model, and which layout ``auto`` picks.

:mod:`orpo.scoring.attention` holds the implementations; this module asks the model (its transformers class,
its ``attn_implementation``, the installed flash-attn) whether one of them can run a layout, and says
why not where none can, for the one log line the trainer writes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from orpo.scoring.attention import BASES, IMPLEMENTATIONS, register
from orpo.scoring.layouts import Layout

#: The layouts that run per segment, in the order ``best_layout`` tries them: a shared prompt runs
#: each prompt once, packed rows spend nothing on padding.
AUTO_ORDER = (Layout.SHARED_PROMPT, Layout.PACKED)


class AttentionRoute(NamedTuple):
    """The implementation that runs a layout per segment on a model, or None and why not."""

    implementation: str | None
    reason: str = ""


def _pretrained(model: torch.nn.Module) -> Any:
    """The transformers model under DDP / compile / PEFT wrappers."""
    from transformers import PreTrainedModel

    while True:
        if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):  # torch.compile's
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP's, accelerate's
            model = model.module  # type: ignore[assignment]
        else:
            break
    if not isinstance(model, PreTrainedModel) and callable(getattr(model, "get_base_model", None)):
        model = model.get_base_model()  # type: ignore[operator]
    return model


def base_implementation(model: torch.nn.Module) -> str | None:
    """The model's attn_implementation, seen through ours (``orpo_sdpa`` -> ``sdpa``)."""
    from orpo.internals.private import attn_implementation

    name = attn_implementation(getattr(_pretrained(model), "config", None))
    return BASES.get(name, name) if name is not None else None


def _flash_available(base: str) -> bool:
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    return is_flash_attn_3_available() if base == "flash_attention_3" else is_flash_attn_2_available()


def segment_route(model: torch.nn.Module, layout: Layout) -> AttentionRoute:
    """Which per-segment implementation runs ``layout`` (packed or shared prompt) on ``model``."""
    from transformers import PreTrainedModel

    if layout not in AUTO_ORDER:
        raise ValueError(f"layout must be Layout.PACKED or Layout.SHARED_PROMPT, got {layout!r}")
    if not isinstance(_pretrained(model), PreTrainedModel):
        return AttentionRoute(None, f"{type(model).__name__} is not a transformers model")
    base = base_implementation(model)
    if base not in IMPLEMENTATIONS:
        return AttentionRoute(None, f"attn_implementation {base!r} has no per-segment path")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if base == "flex_attention" and device.type == "cpu":
        return AttentionRoute(None, "flex attention has no backward on CPU")
    if base.startswith("flash_attention"):
        if not _flash_available(base):
            return AttentionRoute(None, f"{base} is not installed")
        from transformers.modeling_flash_attention_utils import flash_attn_supports_top_left_mask

        if layout is Layout.SHARED_PROMPT and flash_attn_supports_top_left_mask():
            return AttentionRoute(
                None, "flash-attn < 2.1 aligns causal masks top-left; shared_prompt needs bottom-right"
            )
    return AttentionRoute(IMPLEMENTATIONS[base])


def use_segment_attention(model: torch.nn.Module, implementation: str) -> str:
    """Switch ``model`` to one of :data:`IMPLEMENTATIONS`' names; returns the previous name (to restore).

    Padded forwards still run the base attention, so the switch can last the whole training
    run (gradient checkpointing recomputes layers outside any per-call scope).
    """
    if implementation not in BASES:
        raise ValueError(f"not a per-segment implementation: {implementation!r}; one of {sorted(BASES)}")
    from orpo.internals.private import attn_implementation

    register()
    pretrained = _pretrained(model)
    previous = attn_implementation(pretrained.config) or "eager"  # transformers' own default
    pretrained.set_attn_implementation(implementation)
    if attn_implementation(pretrained.config) != implementation:
        raise ValueError(f"{type(pretrained).__name__} does not dispatch attention through AttentionInterface")
    return previous


def best_layout(model: torch.nn.Module, requested: Layout | None = None) -> tuple[Layout, AttentionRoute]:
    """The batch layout to train ``model`` with, and the attention route that runs it.

    ``requested`` None ("auto") takes the first of :data:`AUTO_ORDER` the model's attention can
    run per segment, else padded; a requested layout runs padded only if it cannot run here.  The
    route's reason says why, for the one log line the caller writes.
    """
    if requested is Layout.PADDED:
        return Layout.PADDED, AttentionRoute(None, "requested")
    reasons = []
    for layout in AUTO_ORDER if requested is None else (requested,):
        route = segment_route(model, layout)
        if route.implementation is not None:
            return layout, route
        reasons.append(f"{layout.value}: {route.reason}")
    return Layout.PADDED, AttentionRoute(None, "; ".join(reasons))
