"""Batch layouts: the marker every collator puts in its batches, and what scoring reads from them.

The loss and the metrics read one layout only, the *padded* one: rows are sequences, chosen
0..B-1 then rejected B..2B-1.  A *padding-free* batch (:class:`orpo.scoring.packing.ORPOPackingCollator`)
holds all 2B sequences in one row; a *shared-prompt* batch
(:class:`orpo.scoring.packing.ORPOSharedPromptCollator`) holds each pair as prompt | chosen | rejected.
Both *row* layouts carry their :class:`orpo.scoring.segments.Segments` (the attention calls, known on the
host) and the index tensors that move scores between the row and the padded layout, so that
scoring needs no mask and reads nothing back from the device.  This module builds the views and
probes of such batches; it runs no model (:mod:`orpo.scoring.logps` does).
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from orpo.scoring.segments import Segments


class Layout(Enum):
    """How a collated batch lays out its sequences; carried as ``batch[LAYOUT_KEY]``.  The values
    are the names of the ``layout`` option (``ORPOConfig.layout``)."""

    PADDED = "padded"
    PACKED = "padding_free"
    SHARED_PROMPT = "shared_prompt"


#: The batch key of the layout marker.  A plain Python value: ``Trainer._prepare_inputs`` and
#: accelerate's ``send_to_device`` pass it through unchanged, and reading it costs no host sync.
LAYOUT_KEY = "orpo_layout"
#: The batch key of a row layout's :class:`~orpo.scoring.segments.Segments` (also the forward kwarg the
#: per-segment attention reads).  accelerate's ``send_to_device`` moves it with ``Segments.to``.
SEGMENTS_KEY = "orpo_segments"
#: Per scored position of the padded layout (row-major over ``labels[:, 1:]``): its flat index
#: there, and the position in the row whose hidden state predicts it.
SCORE_INDEX_KEY = "score_index"
SCORE_SOURCE_KEY = "score_source"


def score_positions(batch: dict[str, Any], ignore: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, cols, flat index)`` of the positions the padded layout scores, row-major over
    ``labels[:, 1:]`` (and ``nll_labels``): computed by the collator on host tensors, so that
    scoring gathers by index instead of selecting by a mask (which waits for the device)."""
    targets = batch["labels"][:, 1:]
    if "nll_labels" in batch:
        targets = torch.where(targets != ignore, targets, batch["nll_labels"][:, 1:])
    rows, cols = (targets != ignore).nonzero(as_tuple=True)
    return rows, cols, rows * targets.shape[1] + cols


def layout_of(batch: dict[str, Any]) -> Layout:
    """The layout a batch is marked with; a batch without a marker (a user's collator) is padded."""
    marker = batch.get(LAYOUT_KEY, Layout.PADDED)
    if not isinstance(marker, Layout):
        raise TypeError(f"batch[{LAYOUT_KEY!r}] must be an orpo.scoring.layouts.Layout, not {type(marker).__name__}")
    return marker


def segments_of(batch: dict[str, Any]) -> Segments:
    """The segments of a row batch, on the device of its ids (a no-op once the loader moved them)."""
    segments = batch[SEGMENTS_KEY]
    return segments.to(batch["input_ids"].device)


def place_scored(values: torch.Tensor, index: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``values`` of the scored positions at their flat ``index`` in a zero tensor of ``shape``.

    An ``index_copy``: gradients flow back as a gather, with no mask to count on the host.
    """
    flat = torch.zeros(shape.numel(), dtype=values.dtype, device=values.device)
    return flat.index_copy(0, index, values).view(shape)


def padded_of(batch: dict[str, Any]) -> dict[str, Any]:
    """The ordinary padded batch of the same pairs (for a model that cannot run the row)."""
    out: dict[str, Any] = {
        "input_ids": batch["padded_input_ids"],
        "attention_mask": batch["padded_attention_mask"],
        "labels": batch["labels"],
    }
    for key in ("nll_labels", SCORE_INDEX_KEY):  # the index is over the padded layout already
        if key in batch:
            out[key] = batch[key]
    out[LAYOUT_KEY] = Layout.PADDED
    return out


def row_view(batch: dict[str, Any], start: int, stop: int, segments: Segments | None) -> dict[str, Any]:
    """Tokens ``[start, stop)`` of a row batch as a one-row batch, with the ``segments`` that describe them."""
    view = {key: batch[key][:, start:stop] for key in ("input_ids", "position_ids")}
    if segments is not None:
        view[SEGMENTS_KEY] = segments.to(batch["input_ids"].device)
    return view


def first_sequence(batch: dict[str, Any], tokens: int) -> dict[str, Any]:
    """The first ``tokens`` of the row's first sequence: a one-row padded batch (the fused head's probe)."""
    first = segments_of(batch).calls[0]  # always a sequence of its own starting the row
    view = row_view(batch, 0, min(tokens, first.length), None)
    view["labels"] = view["input_ids"].clone()
    return view


def packing_probe(batch: dict[str, Any], probe_tokens: int = 24) -> tuple[dict[str, Any], int, torch.Tensor] | None:
    """The first ``probe_tokens`` of the row's first two sequences packed in one row, where the
    second one starts in that row, and the second one's ids alone; None if the row has one sequence."""
    from orpo.scoring.segments import packed_segments

    calls = segments_of(batch).calls
    if len(calls) < 2:
        return None
    ids, positions = batch["input_ids"], batch["position_ids"]
    spans = [(call.start, call.start + min(probe_tokens, call.length)) for call in calls[:2]]
    lengths = [stop - start for start, stop in spans]
    probe = {
        "input_ids": torch.cat([ids[:, a:b] for a, b in spans], dim=1),
        "position_ids": torch.cat([positions[:, a:b] for a, b in spans], dim=1),
        SEGMENTS_KEY: packed_segments(lengths).to(ids.device),
    }
    second = spans[1]
    return probe, lengths[0], ids[:, second[0] : second[1]]


def shared_prompt_probe(batch: dict[str, Any]) -> tuple[dict[str, Any], int, torch.Tensor, int] | None:
    """The first pair with a prompt and a rejected completion as its own shared-prompt row, and
    the ids of that prompt + rejected alone.

    Returns ``(row, rejected_start, alone_ids, prompt_length)``: the rejected tokens are
    ``row[rejected_start:]`` and ``alone_ids[prompt_length:]``; None when no pair has both.
    """
    from orpo.scoring.segments import shared_prompt_segments

    call = next((call for call in segments_of(batch).calls if call.prefix), None)
    if call is None:
        return None
    prompt, chosen, rejected = call.prefix, call.start - call.prefix_stop, call.length
    segments = shared_prompt_segments([prompt], [chosen], [rejected])
    row = row_view(batch, call.prefix_start, call.stop, segments)
    ids = batch["input_ids"]
    alone = torch.cat([ids[:, call.prefix_start : call.prefix_stop], ids[:, call.start : call.stop]], dim=1)
    return row, prompt + chosen, alone, prompt
