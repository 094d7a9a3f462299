"""Which layout a model runs, and which per-segment attention runs a row layout on it: :func:`choose_layout`
is the one function that decides, for the trainer (auto or asked for) and for the scorer (a row batch).

:mod:`orpo.scoring.attention` holds the implementations; this module asks the model (its transformers class,
its ``attn_implementation``, the installed flash-attn) whether one of them can run a layout, and says
why not where none can, for the one log line the trainer writes.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from orpo.scoring.attention import BASES, IMPLEMENTATIONS, register
from orpo.scoring.layouts import Layout
from orpo.scoring.model_view import attn_implementation_of, unwrap

logger = logging.getLogger(__name__)

#: The layouts that run per segment, in the order ``auto`` tries them: a shared prompt runs
#: each prompt once, packed rows spend nothing on padding.
AUTO_ORDER = (Layout.SHARED_PROMPT, Layout.PADDING_FREE)


class AttentionRoute(NamedTuple):
    """The implementation that runs a layout per segment on a model, or None and why not.

    Attributes:
        implementation: one of :data:`orpo.scoring.attention.IMPLEMENTATIONS`' names, or None.
        reason: why none runs it (empty when one does).
    """

    implementation: str | None
    reason: str = ""


def base_implementation(model: torch.nn.Module) -> str | None:
    """The model's attn_implementation, seen through ours (``orpo_sdpa`` -> ``sdpa``).

    Args:
        model: the model, wrapped or not.
    """
    name = attn_implementation_of(model)
    return BASES.get(name, name) if name is not None else None


def _flash_available(base: str) -> bool:
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    return is_flash_attn_3_available() if base == "flash_attention_3" else is_flash_attn_2_available()


def segment_route(model: torch.nn.Module, layout: Layout) -> AttentionRoute:
    """Which per-segment implementation runs ``layout`` (packed or shared prompt) on ``model``.

    Args:
        model: the model, wrapped or not.
        layout: :attr:`Layout.PADDING_FREE` or :attr:`Layout.SHARED_PROMPT`.

    Raises:
        ValueError: ``layout`` is another layout.
    """
    from transformers import PreTrainedModel

    if layout not in AUTO_ORDER:
        raise ValueError(f"layout must be Layout.PADDING_FREE or Layout.SHARED_PROMPT, got {layout!r}")
    if not isinstance(unwrap(model, to_transformers=True), PreTrainedModel):
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

    Args:
        model: the model, wrapped or not; its transformers model is switched.
        implementation: one of :data:`orpo.scoring.attention.IMPLEMENTATIONS`' names (``orpo_sdpa``...).

    Raises:
        ValueError: ``implementation`` is not one of orpo's, or the model does not dispatch attention
            through ``AttentionInterface``.
    """
    if implementation not in BASES:
        raise ValueError(f"not a per-segment implementation: {implementation!r}; one of {sorted(BASES)}")
    register()
    pretrained = unwrap(model, to_transformers=True)
    previous = attn_implementation_of(pretrained) or "eager"  # transformers' own default
    pretrained.set_attn_implementation(implementation)
    if attn_implementation_of(pretrained) != implementation:
        raise ValueError(f"{type(pretrained).__name__} does not dispatch attention through AttentionInterface")
    return previous


class LayoutChoice(NamedTuple):
    """The layout batches are collated in, the per-segment attention that runs it, and why.

    Attributes:
        layout: the layout batches are collated in.
        implementation: the per-segment attention that runs it; None for padded.
        reason: why this layout, for the log line.
        refused: the layout asked for by name that cannot run here (it runs padded), else None.
    """

    layout: Layout
    implementation: str | None  # one of orpo.scoring.attention.IMPLEMENTATIONS' names; None for padded
    reason: str
    #: The layout asked for by name that cannot run here (it runs padded), else None.
    refused: Layout | None = None

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` switched to the attention that runs the layout (padded forwards keep the model's own).

        Args:
            model: the model to switch (returned, switched in place).
        """
        if self.implementation is not None and attn_implementation_of(model) != self.implementation:
            use_segment_attention(model, self.implementation)
        return model

    def log(self) -> None:
        """The one line a trainer writes about its layout."""
        if self.refused is not None:
            logger.warning("layout %s cannot run here (%s); using padded batches", self.refused.value, self.reason)
        else:
            logger.info("layout: %s (%s)", self.layout.value, self.reason)


def choose_layout(requested: str | Layout, model: torch.nn.Module, padded_only: str | None = None) -> LayoutChoice:
    """The batch layout to run ``model`` with: the one place that decides, auto or asked for.

    ``requested`` is "auto" or a layout (its name, as the ``layout`` option spells it).  "auto"
    takes the first of :data:`AUTO_ORDER` the model's attention runs per segment, else padded.  A
    row layout asked for runs padded where no per-segment attention runs it on this model, and
    wherever ``padded_only`` gives a reason (a model kind whose rows hold more than token
    sequences; something that splits batches by rows), with :attr:`LayoutChoice.refused` set.

    Args:
        requested: ``"auto"``, a :class:`Layout` or its name (``"padded"``, ``"padding_free"``, ``"shared_prompt"``).
        model: the model, wrapped or not.
        padded_only: why only padded batches can run here, or None.

    Raises:
        ValueError: ``requested`` names no layout.
    """
    wanted = None if requested == "auto" else Layout(requested)
    origin = "auto" if wanted is None else "requested"
    if wanted is Layout.PADDED:
        return LayoutChoice(Layout.PADDED, None, origin)
    if padded_only is not None:
        return LayoutChoice(Layout.PADDED, None, padded_only, wanted)
    reasons = []
    for layout in AUTO_ORDER if wanted is None else (wanted,):
        route = segment_route(model, layout)
        if route.implementation is not None:
            return LayoutChoice(layout, route.implementation, f"{origin}: attention {route.implementation} runs it")
        reasons.append(f"{layout.value}: {route.reason}" if wanted is None else route.reason)
    why = "; ".join(reasons)
    if wanted is None:
        return LayoutChoice(Layout.PADDED, None, f"auto: no per-segment attention for this model ({why})")
    return LayoutChoice(Layout.PADDED, None, why, wanted)
