"""Batch layouts: the marker every collator puts in its batches, and conversions between layouts.

The loss and the metrics read one layout only, the *padded* one: rows are sequences, chosen
0..B-1 then rejected B..2B-1.  A *packed* batch (:class:`orpo.data.packing.ORPOPackingCollator`)
holds all 2B sequences in one row; a *shared-prompt* batch
(:class:`orpo.data.packing.ORPOSharedPromptCollator`) holds each pair as prompt | chosen |
rejected.  This module moves ids, labels and scores between those layouts and builds the
shared-prompt attention mask; it runs no model (:mod:`orpo.scoring` does).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from enum import Enum
from typing import Any

import torch

logger = logging.getLogger(__name__)


class Layout(Enum):
    """How a collated batch lays out its sequences; carried as ``batch[LAYOUT_KEY]``."""

    PADDED = "padded"
    PACKED = "packed"
    SHARED_PROMPT = "shared_prompt"


#: The batch key of the layout marker.  A plain Python value: ``Trainer._prepare_inputs`` and
#: accelerate's ``send_to_device`` pass it through unchanged, and reading it costs no host sync.
LAYOUT_KEY = "orpo_layout"


def layout_of(batch: dict[str, Any]) -> Layout:
    """The layout a batch is marked with; a batch without a marker (a user's collator) is padded."""
    marker = batch.get(LAYOUT_KEY, Layout.PADDED)
    if not isinstance(marker, Layout):
        raise TypeError(f"batch[{LAYOUT_KEY!r}] must be an orpo.layouts.Layout, not {type(marker).__name__}")
    return marker


# ---- packed batches: all sequences in one row, position ids restarting per sequence ----------


def packed_view(batch: dict[str, Any]) -> dict[str, Any]:
    """The packed row as a one-row batch: model inputs and the packed row's own labels."""
    view = {key: batch[key] for key in ("input_ids", "position_ids")}
    view["labels"] = batch["packed_labels"]
    if "packed_nll_labels" in batch:
        view["nll_labels"] = batch["packed_nll_labels"]
    view[LAYOUT_KEY] = Layout.PADDED  # one row; its position ids keep the sequences apart
    return view


def packed_to_padded(batch: dict[str, Any], scored: torch.Tensor, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Move per-position values of the packed row ``[1, T-1]`` to the padded layout ``[2B, L-1]``.

    ``scored`` marks the packed positions that carry a value.  The target at packed position t+1
    is token ``p = position_ids[t+1]`` (p >= 1: first tokens carry no label) of row
    ``sequence_index[t+1]``; in the padded layout the same prediction sits at shifted column p-1.
    The move is an index_put, so gradients flow back unchanged.
    """
    where = scored[0]
    rows = batch["sequence_index"][0, 1:][where]
    cols = batch["position_ids"][0, 1:][where] - 1
    shape = batch["labels"][:, 1:].shape
    out = []
    for value in values:
        zeros = torch.zeros(shape, dtype=value.dtype, device=value.device)
        out.append(zeros.index_put((rows, cols), value[0][where]))
    return out


def unpack_batch(batch: dict[str, Any], pad_token_id: int = 0) -> dict[str, Any]:
    """The right-padded batch (rows = sequences) holding the same sequences as a packed one."""
    labels = batch["labels"]
    index, positions = batch["sequence_index"][0], batch["position_ids"][0]
    real = index >= 0
    where = (index[real], positions[real])
    input_ids = torch.full(labels.shape, pad_token_id, dtype=torch.long, device=labels.device)
    input_ids = input_ids.index_put(where, batch["input_ids"][0][real])
    attention_mask = torch.zeros_like(input_ids).index_put(where, torch.ones_like(positions[real]))
    out: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if "nll_labels" in batch:
        out["nll_labels"] = batch["nll_labels"]
    out[LAYOUT_KEY] = Layout.PADDED
    return out


def packing_probe(batch: dict[str, Any], probe_tokens: int = 24) -> tuple[dict[str, Any], int, torch.Tensor]:
    """The first ``probe_tokens`` of the batch's first two sequences packed in one row, where the
    second one starts in that row, and the second one's ids alone (to run unpacked)."""
    index, positions, ids = batch["sequence_index"][0], batch["position_ids"][0], batch["input_ids"][0]
    first = ids[(index == 0) & (positions < probe_tokens)]
    second = ids[(index == 1) & (positions < probe_tokens)]
    device = ids.device
    restart = torch.cat([torch.arange(len(first), device=device), torch.arange(len(second), device=device)])
    packed = {"input_ids": torch.cat([first, second])[None], "position_ids": restart[None]}
    return packed, len(first), second[None]


# ---- shared-prompt batches: prompt | chosen | rejected, the prompt run once ----------------------


def shared_prompt_mask(batch: dict[str, Any], implementation: str | None, dtype: torch.dtype) -> Any:
    """The attention mask of a shared-prompt row, in the form the model's attention takes.

    Query q may see key k iff both belong to the same pair, k is not later (by position) and k
    is in the prompt or in q's own completion.  flex_attention gets a BlockMask (blocks with
    nothing to see are skipped), sdpa a boolean ``[1, 1, T, T]`` mask, eager an additive one in
    ``dtype`` (the dtype the model computes in).
    """
    pair, kind, position = batch["shared_pair"][0], batch["shared_kind"][0], batch["position_ids"][0]
    if implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(_b: Any, _h: Any, q: Any, k: Any) -> Any:
            return (pair[q] == pair[k]) & (position[k] <= position[q]) & ((kind[k] == 0) | (kind[k] == kind[q]))

        length = pair.shape[0]
        return create_block_mask(mask_mod, None, None, length, length, device=pair.device)
    allowed = (
        (pair[:, None] == pair[None, :])
        & (position[None, :] <= position[:, None])
        & ((kind[None, :] == 0) | (kind[None, :] == kind[:, None]))
    )[None, None]
    if implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=pair.device).masked_fill(~allowed, torch.finfo(dtype).min)


def shared_inputs(batch: dict[str, Any], implementation: str | None, dtype: torch.dtype) -> dict[str, Any]:
    """Model inputs of a shared-prompt row: ids, positions and the shared-prompt mask."""
    return {
        "input_ids": batch["input_ids"],
        "position_ids": batch["position_ids"],
        "attention_mask": shared_prompt_mask(batch, implementation, dtype),
    }


def beyond_sliding_window(batch: dict[str, Any], window: int | None) -> bool:
    """Whether a sequence of the shared-prompt batch is longer than the model's sliding window.

    The shared-prompt mask replaces the model's own masks, its sliding-window ones included, so
    such a batch runs padded (exact); shorter sequences never reach the window.
    """
    if not window:
        return False
    beyond = int(batch["position_ids"].max()) >= int(window)
    if beyond:
        logger.info("shared_prompt: a sequence is longer than the sliding window (%d); this batch runs padded", window)
    return beyond


def padded_from_shared(batch: dict[str, Any]) -> dict[str, Any]:
    """The ordinary padded batch of the same pairs (for models that cannot take the mask)."""
    out: dict[str, Any] = {
        "input_ids": batch["padded_input_ids"],
        "attention_mask": batch["padded_attention_mask"],
        "labels": batch["labels"],
    }
    if "nll_labels" in batch:
        out["nll_labels"] = batch["nll_labels"]
    out[LAYOUT_KEY] = Layout.PADDED
    return out


def shared_prompt_probe(batch: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor] | None:
    """The batch's first pair as its own shared-prompt row, and the ids of prompt + rejected alone.

    Returns ``(row, alone_ids, rejected)`` with ``rejected`` marking the rejected tokens within
    ``alone_ids``, or None when the pair has no rejected token to compare.
    """
    first = (batch["shared_pair"][0] == 0).nonzero().flatten()
    row = {key: batch[key][:, first] for key in ("input_ids", "position_ids", "shared_pair", "shared_kind")}
    kind = row["shared_kind"][0]
    alone = row["input_ids"][:, kind != 1]
    rejected = kind[kind != 1] == 2
    if not bool(rejected.any()):
        return None
    return row, alone, rejected
