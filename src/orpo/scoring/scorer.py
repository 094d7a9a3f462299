"""TokenScorer: the one object the trainer asks for a batch's token scores.

It picks, once per model and layout, the fastest way :mod:`orpo.scoring.logps` offers that its checks
find exact (the fused LM head; a row layout's per-segment attention, else the padded batch), and
keeps that choice for the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from orpo.scoring.fused import HeadCapture
from orpo.scoring.layouts import Layout, layout_of, padded_of
from orpo.scoring.logps import (
    TokenScores,
    fused_scores,
    plain_scores,
    row_scores,
    verify_fused,
    verify_packing,
    verify_shared_prompt,
)
from orpo.scoring.model_view import output_head, unwrap
from orpo.scoring.routing import choose_layout
from orpo.scoring.segments import first_sequence

logger = logging.getLogger(__name__)

VERIFIERS: dict[Layout, Callable[[torch.nn.Module, dict[str, Any]], bool | None]] = {
    Layout.PADDING_FREE: verify_packing,
    Layout.SHARED_PROMPT: verify_shared_prompt,
}


def route_rows(model: torch.nn.Module, layout: Layout) -> bool:
    """Switch ``model`` to the per-segment attention that runs ``layout`` (as :func:`choose_layout`
    decides); False, with a warning, where none does (the caller runs such batches padded).

    Args:
        model: the model, wrapped or not.
        layout: :attr:`Layout.PADDING_FREE` or :attr:`Layout.SHARED_PROMPT`.
    """
    choice = choose_layout(layout, model)
    if choice.refused is not None:
        logger.warning("%s: %s; running these batches padded instead", layout.value, choice.reason)
        return False
    choice.apply(model)
    return True


class TokenScorer:
    """Scores a batch of any layout the fastest way verified exact for this model.

    ``__call__`` returns :class:`TokenScores` laid out as the padded batch: rows = 2B sequences,
    chosen 0..B-1 then rejected.  Each choice (fused head, padding-free rows, shared prompt) is
    made on the first batch that needs it and kept; a row layout switches the model to the
    per-segment attention that runs it (padded batches still run the model's own attention).

    Args:
        fused: whether to try the fused LM head (``ORPOConfig.fused_lm_head``).
        ignore_index: the label of unscored positions.
        allow_fused: False to ignore ``fused`` (the trainer passes False under FSDP and DeepSpeed).
    """

    def __init__(self, fused: bool, ignore_index: int = -100, allow_fused: bool = True) -> None:
        self.want_fused = fused and allow_fused
        self.ignore_index = ignore_index
        self._verified: bool | None = None
        self._rows_ok: dict[Layout, bool | None] = {}

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any]) -> TokenScores:
        if self.want_fused and self._verified is None and (head := output_head(model)) is not None:
            HeadCapture.of(head)  # before the model's first forward, so a compiled model traces the hook
        layout = layout_of(batch)
        if layout is Layout.PADDED:
            return self._score(model, batch)
        if not self._runs_rows(model, batch, layout):
            return self._score(model, padded_of(batch))
        head = self._usable_head(model, first_sequence(batch, 32))
        return row_scores(model, batch, self.ignore_index, head)

    def _runs_rows(self, model: torch.nn.Module, batch: dict[str, Any], layout: Layout) -> bool:
        """Whether this row layout runs as a row (checked on its first batch; None: asked again)."""
        if self._rows_ok.get(layout) is None:
            routed = route_rows(model, layout)
            self._rows_ok[layout] = VERIFIERS[layout](model, batch) if routed else False
        return bool(self._rows_ok[layout])

    def _usable_head(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.nn.Linear | None:
        """The LM head to fuse through, or None for the plain way (verified on the first batch)."""
        head = output_head(model) if self.want_fused else None
        if head is None and self.want_fused and self._verified is None:
            self._verified = False
            logger.warning(
                "fused_lm_head: the LM head of %s is not a plain torch.nn.Linear (LoRA-wrapped, quantized or "
                "missing); using the plain path",
                type(unwrap(model)).__name__,
            )
        if head is not None and self._verified is None:
            self._verified = verify_fused(model, batch, head, self.ignore_index)
        return head if head is not None and self._verified else None

    def _score(self, model: torch.nn.Module, batch: dict[str, Any]) -> TokenScores:
        head = self._usable_head(model, batch)
        if head is not None:
            return fused_scores(model, batch, self.ignore_index, head)
        return plain_scores(model, batch, self.ignore_index)

    @property
    def uses_fused(self) -> bool | None:
        """None before the first batch, then whether the fused LM head is used."""
        return self._verified if self.want_fused else False

    @property
    def uses_packing(self) -> bool | None:
        """None before the first padding-free batch, then whether such batches run packed."""
        return self._rows_ok.get(Layout.PADDING_FREE)

    @property
    def uses_shared_prompt(self) -> bool | None:
        """None before the first shared-prompt batch, then whether such batches run shared."""
        return self._rows_ok.get(Layout.SHARED_PROMPT)
