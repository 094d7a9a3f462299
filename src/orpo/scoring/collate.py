"""The padded layout: tokenized pairs batched as one concatenated chosen+rejected batch.

The row layouts' collators (:mod:`orpo.scoring.packing`) and the other model kinds' build on it; which
collator a trainer uses is its model kind's answer (:meth:`orpo.models.kinds.ModelKind.collator`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from orpo.scoring.layouts import LAYOUT_KEY, SCORE_INDEX_KEY, Layout, score_positions

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

#: A collator: dataset rows -> one batch (a dict of tensors and its ``LAYOUT_KEY`` marker).
Collator = Callable[[list[dict[str, Any]]], dict[str, Any]]


@dataclass
class ORPODataCollator:
    """Pads B pairs into 2B right-padded rows: chosen rows 0..B-1, rejected rows B..2B-1.

    ``labels`` score the completion tokens only.  With ``nll_scope="prompt_and_completion"``
    an extra ``nll_labels`` tensor also scores the prompt (never a sequence's first token,
    which nothing predicts).  One forward pass then serves both halves of every pair.
    ``score_index`` lists the scored positions (:func:`orpo.scoring.layouts.score_positions`).

    Attributes:
        pad_token_id: the id that pads ``input_ids``.
        label_pad_token_id: the label of unscored positions (``ORPOConfig.label_pad_token_id``).
        pad_to_multiple_of: round the padded length up to a multiple of this; None: the longest sequence.
        nll_scope: ``"completion"``, or ``"prompt_and_completion"`` to add ``nll_labels``.
    """

    pad_token_id: int
    label_pad_token_id: int = -100
    pad_to_multiple_of: int | None = None
    nll_scope: str = "completion"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        sequences: list[tuple[list[int], int]] = []  # (ids, prompt length)
        for key in ("chosen_input_ids", "rejected_input_ids"):
            for feature in features:
                prompt = list(feature["prompt_input_ids"])
                sequences.append((prompt + list(feature[key]), len(prompt)))
        length = max(len(ids) for ids, _ in sequences)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        rows = len(sequences)
        input_ids = torch.full((rows, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((rows, length), dtype=torch.long)
        labels = torch.full((rows, length), self.label_pad_token_id, dtype=torch.long)
        for row, (ids, prompt_len) in enumerate(sequences):
            tensor = torch.tensor(ids, dtype=torch.long)
            input_ids[row, : len(ids)] = tensor
            attention_mask[row, : len(ids)] = 1
            labels[row, prompt_len : len(ids)] = tensor[prompt_len:]
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if self.nll_scope == "prompt_and_completion":
            nll_labels = torch.where(attention_mask.bool(), input_ids, self.label_pad_token_id)
            nll_labels[:, 0] = self.label_pad_token_id
            batch["nll_labels"] = nll_labels
        if "orpo_row_index" in features[0]:  # dataset rows, for reports on bad batches (orpo.training.reliability)
            batch["orpo_row_index"] = torch.tensor([int(f["orpo_row_index"]) for f in features], dtype=torch.long)
        batch[SCORE_INDEX_KEY] = score_positions(batch, self.label_pad_token_id)[2]
        batch[LAYOUT_KEY] = Layout.PADDED
        return batch
