"""One forward pass over a concatenated chosen+rejected batch -> per-token log-probs.

Two paths with the same result: ``plain`` reads the model's logits; ``fused`` captures the
final hidden states at the LM head and computes log-probs chunked through the head, only on
scored tokens (see :mod:`orpo.fused`).  The fused path is verified against the plain one on
the first batch and disabled, with a warning, for any model where they disagree.

The paths live in :mod:`orpo.scoring`, the packed and shared-prompt layouts in
:mod:`orpo.layouts`; :class:`TokenScorer` dispatches between them.  Their names are
re-exported here, where the rest of the package and its users import them from.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .layouts import (
    _beyond_sliding_window,
    is_packed,
    is_shared_prompt,
    packed_view,
    padded_from_shared,
    rows_from_packed,
    shared_prompt_mask,
    shared_prompt_scores,
    unpack_batch,
    verify_packing,
    verify_shared_prompt,
)
from .scoring import (
    MODEL_INPUT_KEYS,
    TokenScores,
    _HeadCapture,
    _model_inputs,
    fused_scores,
    output_head,
    plain_scores,
    shifted_targets,
    unwrap,
)

__all__ = [
    "MODEL_INPUT_KEYS",
    "TokenScorer",
    "TokenScores",
    "fused_scores",
    "is_packed",
    "is_shared_prompt",
    "output_head",
    "packed_view",
    "padded_from_shared",
    "plain_scores",
    "rows_from_packed",
    "shared_prompt_mask",
    "shared_prompt_scores",
    "shifted_targets",
    "unpack_batch",
    "unwrap",
    "verify_packing",
    "verify_shared_prompt",
]

logger = logging.getLogger(__name__)


def _verification_probe(batch: dict[str, Any]) -> dict[str, Any]:
    """A small batch to compare the fused and plain paths on: one row's first 32 tokens, or the
    whole batch when some input does not slice by row (image patches, non-tensor inputs)."""
    inputs = _model_inputs(batch)
    if "pixel_values" in batch or not all(torch.is_tensor(value) for value in inputs.values()):
        return batch
    rows = {key: value[:1, :32] for key, value in inputs.items()}
    return {**rows, "labels": rows.get("decoder_input_ids", rows["input_ids"]).clone()}


class TokenScorer:
    """Chooses the fused path when it is exact for this model, else the plain path."""

    def __init__(self, fused: bool, ignore_index: int = -100, allow_fused: bool = True) -> None:
        self.want_fused = fused and allow_fused
        self.ignore_index = ignore_index
        self._verified: bool | None = None
        self._packing_ok: bool | None = None
        self._shared_ok: bool | None = None

    def _verify(self, model: torch.nn.Module, batch: dict[str, Any], head: torch.nn.Linear) -> bool | None:
        probe = _verification_probe(batch)
        with torch.no_grad():
            was_training = model.training
            model.eval()
            try:
                plain = plain_scores(model, probe, self.ignore_index).logps
                fused = fused_scores(model, probe, self.ignore_index, head).logps
            finally:
                model.train(was_training)
        if not (torch.isfinite(plain).all() and torch.isfinite(fused).all()):
            return None  # a non-finite probe proves nothing: this batch takes the plain path, a later one decides
        ok = bool(torch.allclose(plain, fused, rtol=1e-3, atol=1e-3 * (1 + plain.abs().max().item())))
        if not ok:
            logger.warning(
                "fused LM-head log-probs differ from the model's own logits for %s (max abs diff %.3g); "
                "using the plain path",
                type(unwrap(model)).__name__,
                (plain - fused).abs().max().item(),
            )
        return ok

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any]) -> TokenScores:
        if self.want_fused and self._verified is None and (head := output_head(model)) is not None:
            _HeadCapture.of(head)  # before the model's first forward, so a compiled model traces the hook
        if is_shared_prompt(batch):
            return self._score_shared(model, batch)
        if is_packed(batch):
            return self._score_packed(model, batch)
        return self._score(model, batch)

    def _score_shared(self, model: torch.nn.Module, batch: dict[str, Any]) -> TokenScores:
        """Scores of a shared-prompt batch, laid out like the padded batch's (rows = sequences)."""
        if self._shared_ok is None:
            self._shared_ok = verify_shared_prompt(model, batch)
        if not self._shared_ok or _beyond_sliding_window(model, batch):
            return self._score(model, padded_from_shared(batch))
        view = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
        return shared_prompt_scores(model, batch, self.ignore_index, self._usable_head(model, view))

    def _score_packed(self, model: torch.nn.Module, batch: dict[str, Any]) -> TokenScores:
        """Scores of a padding-free batch, laid out like the padded batch's (rows = sequences)."""
        if self._packing_ok is None:
            self._packing_ok = verify_packing(model, batch)
        if not self._packing_ok:
            return self._score(model, unpack_batch(batch))
        return rows_from_packed(self._score(model, packed_view(batch)), batch, self.ignore_index)

    def _usable_head(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.nn.Linear | None:
        """The LM head to fuse through, or None for the plain path (verified on the first batch)."""
        head = output_head(model) if self.want_fused else None
        if head is None and self.want_fused and self._verified is None:
            self._verified = False
            logger.warning(
                "fused_lm_head: the LM head of %s is not a plain torch.nn.Linear (LoRA-wrapped, quantized or "
                "missing); using the plain path",
                type(unwrap(model)).__name__,
            )
        if head is not None and self._verified is None:
            self._verified = self._verify(model, batch, head)
        return head if head is not None and self._verified else None

    def _score(self, model: torch.nn.Module, batch: dict[str, Any]) -> TokenScores:
        head = self._usable_head(model, batch)
        if head is not None:
            return fused_scores(model, batch, self.ignore_index, head)
        return plain_scores(model, batch, self.ignore_index)

    @property
    def uses_fused(self) -> bool | None:
        return self._verified if self.want_fused else False

    @property
    def uses_packing(self) -> bool | None:
        """None before the first padding-free batch, then whether packed batches run packed."""
        return self._packing_ok

    @property
    def uses_shared_prompt(self) -> bool | None:
        """None before the first shared-prompt batch, then whether such batches run shared."""
        return self._shared_ok
