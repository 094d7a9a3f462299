"""Batch layouts: the marker every collator puts in its batches, and what scoring reads from them.

The loss and the metrics read one layout only, the *padded* one: rows are sequences, chosen
0..B-1 then rejected B..2B-1.  A *padding-free* batch (:class:`orpo.scoring.packing.ORPOPaddingFreeCollator`)
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

from orpo.config.arguments import LAYOUT_NAMES

if TYPE_CHECKING:
    from orpo.scoring.segments import Segments


class Layout(Enum):
    """How a collated batch lays out its sequences; carried as ``batch[LAYOUT_KEY]``.  The values
    are the names of the ``layout`` option (``ORPOConfig.layout``)."""

    # The names are the ``layout`` option's, declared once in orpo.config.arguments.LAYOUT_NAMES.
    PADDED = LAYOUT_NAMES[0]
    PADDING_FREE = LAYOUT_NAMES[1]
    SHARED_PROMPT = LAYOUT_NAMES[2]


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


def targets(batch: dict[str, Any], ignore: int) -> torch.Tensor:
    """The token each position 0..L-2 of a padded batch predicts, ``ignore`` where nothing is scored:
    completion labels, plus the prompt's where the NLL covers it (``nll_labels``).  The one place
    labels and ``nll_labels`` are merged, for the collators' index and for scoring alike.

    Args:
        batch: a padded batch (``labels``, optionally ``nll_labels``), or a row batch's padded labels.
        ignore: the label of unscored positions.

    Returns:
        ``[rows, L-1]`` token ids.
    """
    shifted = batch["labels"][:, 1:]
    if "nll_labels" in batch:
        shifted = torch.where(shifted != ignore, shifted, batch["nll_labels"][:, 1:])
    return shifted


def score_positions(batch: dict[str, Any], ignore: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, cols, flat index)`` of the positions the padded layout scores, row-major over
    ``labels[:, 1:]`` (and ``nll_labels``): computed by the collator on host tensors, so that
    scoring gathers by index instead of selecting by a mask (which waits for the device).

    Args:
        batch: a padded batch with ``labels`` (and optionally ``nll_labels``), on the host.
        ignore: the label of unscored positions.
    """
    scored = targets(batch, ignore)
    rows, cols = (scored != ignore).nonzero(as_tuple=True)
    return rows, cols, rows * scored.shape[1] + cols


def layout_of(batch: dict[str, Any]) -> Layout:
    """The layout a batch is marked with; a batch without a marker (a user's collator) is padded.

    Args:
        batch: a collated batch.

    Raises:
        TypeError: ``batch[LAYOUT_KEY]`` is not a :class:`Layout`.
    """
    marker = batch.get(LAYOUT_KEY, Layout.PADDED)
    if not isinstance(marker, Layout):
        raise TypeError(f"batch[{LAYOUT_KEY!r}] must be an orpo.scoring.layouts.Layout, not {type(marker).__name__}")
    return marker


def segments_of(batch: dict[str, Any]) -> Segments:
    """The segments of a row batch, on the device of its ids (a no-op once the loader moved them).

    Args:
        batch: a padding-free or shared-prompt batch.
    """
    segments = batch[SEGMENTS_KEY]
    return segments.to(batch["input_ids"].device)


def place_scored(values: torch.Tensor, index: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``values`` of the scored positions at their flat ``index`` in a zero tensor of ``shape``.

    An ``index_copy``: gradients flow back as a gather, with no mask to count on the host.

    Args:
        values: ``[K]`` one value per scored position.
        index: ``[K]`` their flat positions in ``shape`` (``score_index``).
        shape: the padded layout's ``[rows, L-1]``.
    """
    flat = torch.zeros(shape.numel(), dtype=values.dtype, device=values.device)
    return flat.index_copy(0, index, values).view(shape)


def padded_of(batch: dict[str, Any]) -> dict[str, Any]:
    """The ordinary padded batch of the same pairs (for a model that cannot run the row).

    Args:
        batch: a padding-free or shared-prompt batch (it carries ``padded_input_ids`` and
            ``padded_attention_mask``).
    """
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
