"""Padding-free batching: every chosen and rejected sequence of a batch in ONE row
(:class:`ORPOPaddingFreeCollator`), or each pair's prompt once for both completions
(:class:`ORPOSharedPromptCollator`, below).

The row holds the sequences back to back with ``position_ids`` restarting at 0 for each one
and no ``attention_mask``: no compute goes to padding.  Attention runs per sequence, through
the per-segment implementations of :mod:`orpo.scoring.attention`, from the row's
:class:`~orpo.scoring.segments.Segments`, which the collator builds from the lengths it knows.

A row batch carries, besides ``input_ids``/``position_ids`` ``[1, T]``:

* ``orpo_segments``: the :class:`~orpo.scoring.segments.Segments` of the row;
* ``score_index`` and ``score_source`` ``[K]``: for each position the padded layout scores (row-major
  over ``labels[:, 1:]``), its flat index there and the row position whose hidden state predicts it
  (scores move between the layouts by gather and ``index_copy``, with no mask to count);
* ``labels`` (and ``nll_labels``) ``[2B, L]``: exactly the padded collator's labels (the loss and
  the window counts read them), and ``padded_input_ids``/``padded_attention_mask``, to run the
  batch padded if the model cannot run the row;
* ``row_tokens``: how many of the row's tokens are real (a Python int; the rest is trailing padding),
  for the load-balancing loss of MoE models (:mod:`orpo.scoring.moe`);
* ``orpo_layout``: :attr:`orpo.scoring.layouts.Layout.PADDING_FREE` or ``SHARED_PROMPT``, what scoring dispatches on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from orpo.scoring.collate import ORPODataCollator
from orpo.scoring.layouts import LAYOUT_KEY, SCORE_INDEX_KEY, SCORE_SOURCE_KEY, SEGMENTS_KEY, score_positions
from orpo.scoring.segments import Segments, packed_segments, shared_prompt_segments

#: The batch key of a row's count of real tokens (a Python int, moved by nobody).
ROW_TOKENS_KEY = "row_tokens"


def _padded_total(length: int, multiple: int | None) -> int:
    return -(-length // multiple) * multiple if multiple else length


def _row_batch(
    ids: list[int], padded: dict[str, Any], segments: Segments, index: torch.Tensor, source: torch.Tensor, pad: int
) -> dict[str, Any]:
    total = segments.total
    batch: dict[str, Any] = {
        "input_ids": torch.tensor(ids + [pad] * (total - len(ids)), dtype=torch.long)[None],
        "position_ids": segments.tensors["positions"].to(torch.long)[None],
        SEGMENTS_KEY: segments,
        SCORE_INDEX_KEY: index,
        SCORE_SOURCE_KEY: source,
        "labels": padded["labels"],
        "padded_input_ids": padded["input_ids"],
        "padded_attention_mask": padded["attention_mask"],
        ROW_TOKENS_KEY: len(ids),
    }
    for key in ("nll_labels", "orpo_row_index"):
        if key in padded:
            batch[key] = padded[key]
    batch[LAYOUT_KEY] = segments.layout
    return batch


@dataclass
class ORPOPaddingFreeCollator(ORPODataCollator):
    """Packs the 2B sequences of B pairs into one row (chosen 0..B-1, then rejected 0..B-1).

    ``pad_to_multiple_of`` pads the packed row (not each sequence) at its end; the padding is
    a sequence of its own with positions from 0, so it attends to nothing real and nothing
    real attends to it.

    Attributes:
        pad_token_id: the id that pads the row (and the padded batch it carries).
        label_pad_token_id: the label of unscored positions.
        pad_to_multiple_of: pad the packed row's length up to a multiple of this; None: no padding.
        nll_scope: ``"completion"``, or ``"prompt_and_completion"`` to add ``nll_labels``.
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        padded = super().__call__(features)  # the padded layout's labels (and nll_labels)
        lengths = padded["attention_mask"].sum(-1).tolist()
        ids: list[int] = []
        for row, length in enumerate(lengths):
            ids += padded["input_ids"][row, :length].tolist()
        segments = packed_segments(lengths, _padded_total(len(ids), self.pad_to_multiple_of))
        rows, cols, index = score_positions(padded, self.label_pad_token_id)
        starts = torch.tensor([0, *lengths], dtype=torch.long).cumsum(0)
        return _row_batch(ids, padded, segments, index, starts[rows] + cols, self.pad_token_id)


@dataclass
class ORPOSharedPromptCollator(ORPODataCollator):
    """Packs each pair as ``prompt | chosen | rejected`` in one row: the prompt runs once.

    Positions: the prompt 0..P-1, chosen and rejected both P..; the segments let a rejected token
    see its own prompt and the rejected tokens before it, never chosen.  Every completion token is
    then computed exactly as in its own padded row.  A scored position of the padded layout is
    predicted by a prompt token (the last prompt token for both completions' first tokens) or by
    a token of its own completion.

    Attributes:
        pad_token_id: the id that pads the row (and the padded batch it carries).
        label_pad_token_id: the label of unscored positions.
        pad_to_multiple_of: pad the row's length up to a multiple of this; None: no padding.
        nll_scope: ``"completion"``, or ``"prompt_and_completion"`` to add ``nll_labels``.
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        padded = super().__call__(features)
        pairs = len(features)
        ids: list[int] = []
        lengths: tuple[list[int], list[int], list[int]] = ([], [], [])  # prompt, chosen, rejected per pair
        prompt_start = torch.empty(pairs, dtype=torch.long)
        completion_start = torch.empty((2, pairs), dtype=torch.long)  # [chosen/rejected, pair]
        for i, feature in enumerate(features):
            prompt_start[i] = len(ids)
            for kind, key in enumerate(("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")):
                if kind:
                    completion_start[kind - 1, i] = len(ids)
                tokens = list(feature[key])
                lengths[kind].append(len(tokens))
                ids += tokens
        segments = shared_prompt_segments(*lengths, total=_padded_total(len(ids), self.pad_to_multiple_of))
        # Row r, shifted column c predicts token c+1 from the hidden state of token c of that row.
        rows, cols, index = score_positions(padded, self.label_pad_token_id)
        prompt_len = torch.tensor(lengths[0], dtype=torch.long)
        pair, completion = rows % pairs, rows // pairs
        source = torch.where(
            cols < prompt_len[pair],
            prompt_start[pair] + cols,
            completion_start[completion, pair] + cols - prompt_len[pair],
        )
        return _row_batch(ids, padded, segments, index, source, self.pad_token_id)
