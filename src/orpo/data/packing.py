"""Padding-free batching: every chosen and rejected sequence of a batch in ONE row
(:class:`ORPOPackingCollator`), or each pair's prompt once for both completions
(:class:`ORPOSharedPromptCollator`, below).

The row holds the sequences back to back with ``position_ids`` restarting at 0 for each one
and no ``attention_mask``.  Transformers reads such a row as packed sequences (a new sequence
starts wherever the position ids do not go up by one) and keeps them apart: flash-attention 2/3
through varlen kernels, flex attention through a block mask, sdpa and eager through a
block-diagonal causal mask.  No compute goes to padding.

Besides the packed model inputs the batch carries, for the loss and the logged metrics:

* ``packed_labels`` (and ``packed_nll_labels``), ``[1, T]``: the labels of the packed row,
  ``-100`` on prompts and on the first token of every sequence, so that no position is asked
  to predict the first token of the next sequence;
* ``sequence_index``, ``[1, T]``: for each token, the row the sequence would have in the padded
  batch (chosen of pair i: row i, rejected of pair i: row B + i; ``-1`` on trailing padding);
* ``labels`` (and ``nll_labels``), ``[2B, L]``: exactly the padded collator's labels.  They
  hold no activations, only ids; token scores are read back into that layout (see
  :func:`orpo.layouts.packed_to_padded`), so the loss code is the same for every layout;
* ``orpo_layout``: :attr:`orpo.layouts.Layout.PACKED` (or ``SHARED_PROMPT``), what scoring dispatches on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..layouts import LAYOUT_KEY, Layout
from .collate import ORPODataCollator


@dataclass
class ORPOPackingCollator(ORPODataCollator):
    """Packs the 2B sequences of B pairs into one row (chosen 0..B-1, then rejected 0..B-1).

    ``pad_to_multiple_of`` pads the packed row (not each sequence) at its end; the padding is
    a sequence of its own with positions from 0, so it attends to nothing real and nothing
    real attends to it.
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        padded = super().__call__(features)  # the padded layout's labels (and nll_labels)
        ignore = self.label_pad_token_id
        ids: list[torch.Tensor] = []
        positions: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        nll_labels: list[torch.Tensor] = []
        index: list[torch.Tensor] = []
        for row in range(padded["input_ids"].shape[0]):
            length = int(padded["attention_mask"][row].sum())
            ids.append(padded["input_ids"][row, :length])
            positions.append(torch.arange(length, dtype=torch.long))
            row_labels = padded["labels"][row, :length].clone()
            row_labels[0] = ignore
            labels.append(row_labels)
            if "nll_labels" in padded:
                row_nll = padded["nll_labels"][row, :length].clone()
                row_nll[0] = ignore
                nll_labels.append(row_nll)
            index.append(torch.full((length,), row, dtype=torch.long))
        total = sum(len(t) for t in ids)
        if self.pad_to_multiple_of and total % self.pad_to_multiple_of:
            extra = self.pad_to_multiple_of - total % self.pad_to_multiple_of
            ids.append(torch.full((extra,), self.pad_token_id, dtype=torch.long))
            positions.append(torch.arange(extra, dtype=torch.long))
            labels.append(torch.full((extra,), ignore, dtype=torch.long))
            if nll_labels:
                nll_labels.append(torch.full((extra,), ignore, dtype=torch.long))
            index.append(torch.full((extra,), -1, dtype=torch.long))
        batch: dict[str, Any] = {
            "input_ids": torch.cat(ids)[None],
            "position_ids": torch.cat(positions)[None],
            "packed_labels": torch.cat(labels)[None],
            "sequence_index": torch.cat(index)[None],
            "labels": padded["labels"],
        }
        if "nll_labels" in padded:
            batch["packed_nll_labels"] = torch.cat(nll_labels)[None]
            batch["nll_labels"] = padded["nll_labels"]
        if "orpo_row_index" in padded:
            batch["orpo_row_index"] = padded["orpo_row_index"]
        batch[LAYOUT_KEY] = Layout.PACKED
        return batch


@dataclass
class ORPOSharedPromptCollator(ORPODataCollator):
    """Packs each pair as ``prompt | chosen | rejected`` in one row: the prompt runs once.

    Positions: the prompt 0..P-1, chosen and rejected both P..; the attention mask (built in
    :func:`orpo.layouts.shared_prompt_mask`) lets a token see the earlier tokens of its own pair
    that are in the prompt or in its own completion, so rejected never sees chosen.  Every
    completion token is then computed exactly as in its own padded row.

    Besides ``input_ids``/``position_ids`` ``[1, T]`` the batch carries ``shared_pair`` and
    ``shared_kind`` ``[1, T]`` (pair index; 0 prompt, 1 chosen, 2 rejected; -1 on padding),
    ``score_source`` ``[K]``: for each scored position of the padded layout, in row-major order,
    the packed index of the token whose hidden state predicts it (the last prompt token for
    both completions' first tokens), the padded layout's ``labels`` (and ``nll_labels``), and
    ``padded_input_ids``/``padded_attention_mask`` to run the batch padded if the model cannot
    take the mask.
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        padded = super().__call__(features)
        pairs = len(features)
        ids: list[int] = []
        positions: list[int] = []
        pair_of: list[int] = []
        kind_of: list[int] = []
        prompt_start = torch.empty(pairs, dtype=torch.long)
        prompt_len = torch.empty(pairs, dtype=torch.long)
        completion_start = torch.empty((2, pairs), dtype=torch.long)  # [chosen/rejected, pair]
        for i, feature in enumerate(features):
            prompt = list(feature["prompt_input_ids"])
            prompt_start[i], prompt_len[i] = len(ids), len(prompt)
            segments = (
                (0, prompt, 0),
                (1, list(feature["chosen_input_ids"]), len(prompt)),
                (2, list(feature["rejected_input_ids"]), len(prompt)),
            )
            for kind, tokens, first in segments:
                if kind:
                    completion_start[kind - 1, i] = len(ids)
                ids += tokens
                positions += range(first, first + len(tokens))
                pair_of += [i] * len(tokens)
                kind_of += [kind] * len(tokens)
        if self.pad_to_multiple_of and len(ids) % self.pad_to_multiple_of:
            extra = self.pad_to_multiple_of - len(ids) % self.pad_to_multiple_of
            ids += [self.pad_token_id] * extra
            positions += range(extra)
            pair_of += [-1] * extra
            kind_of += [-1] * extra
        # The positions the padded path scores: row r, shifted column c predicts token c+1 from
        # the hidden state of token c of that row, which sits in the prompt or in the completion.
        targets = padded["labels"][:, 1:]
        if "nll_labels" in padded:
            targets = torch.where(targets != self.label_pad_token_id, targets, padded["nll_labels"][:, 1:])
        rows, cols = (targets != self.label_pad_token_id).nonzero(as_tuple=True)
        pair, completion = rows % pairs, rows // pairs
        in_prompt = cols < prompt_len[pair]
        source = torch.where(
            in_prompt, prompt_start[pair] + cols, completion_start[completion, pair] + cols - prompt_len[pair]
        )
        batch: dict[str, Any] = {
            "input_ids": torch.tensor(ids, dtype=torch.long)[None],
            "position_ids": torch.tensor(positions, dtype=torch.long)[None],
            "shared_pair": torch.tensor(pair_of, dtype=torch.long)[None],
            "shared_kind": torch.tensor(kind_of, dtype=torch.long)[None],
            "score_source": source,
            "labels": padded["labels"],
            "padded_input_ids": padded["input_ids"],
            "padded_attention_mask": padded["attention_mask"],
        }
        for key in ("nll_labels", "orpo_row_index"):
            if key in padded:
                batch[key] = padded[key]
        batch[LAYOUT_KEY] = Layout.SHARED_PROMPT
        return batch
