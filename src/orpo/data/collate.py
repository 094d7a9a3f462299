"""Batching of tokenized pairs into one concatenated chosen+rejected batch, and the choice of
collator for a model kind and the speed switches."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..layouts import LAYOUT_KEY, Layout

if TYPE_CHECKING:
    from ..config import ORPOConfig

logger = logging.getLogger(__name__)

#: A collator: dataset rows -> one batch (a dict of tensors and its ``LAYOUT_KEY`` marker).
Collator = Callable[[list[dict[str, Any]]], dict[str, Any]]


@dataclass
class ORPODataCollator:
    """Pads B pairs into 2B right-padded rows: chosen rows 0..B-1, rejected rows B..2B-1.

    ``labels`` score the completion tokens only.  With ``nll_scope="prompt_and_completion"``
    an extra ``nll_labels`` tensor also scores the prompt (never a sequence's first token,
    which nothing predicts).  One forward pass then serves both halves of every pair.
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
        if "orpo_row_index" in features[0]:  # dataset rows, for reports on bad batches (orpo.reliability)
            batch["orpo_row_index"] = torch.tensor([int(f["orpo_row_index"]) for f in features], dtype=torch.long)
        batch[LAYOUT_KEY] = Layout.PADDED
        return batch


def choose_layout(model_kind: str, padding_free: bool, shared_prompt: bool) -> Layout:
    """The batch layout for a model kind ("causal", "vision", "seq2seq") and the speed switches.

    ``shared_prompt`` overrides ``padding_free``; vision-language and encoder-decoder models take
    padded batches only, with a warning naming the switch that is ignored.
    """
    if model_kind == "causal":
        return Layout.SHARED_PROMPT if shared_prompt else Layout.PACKED if padding_free else Layout.PADDED
    ignored = [name for name, on in (("padding_free", padding_free), ("shared_prompt", shared_prompt)) if on]
    if ignored:
        logger.warning(
            "%s %s not supported for %s models; using padded batches",
            " and ".join(ignored),
            "is" if len(ignored) == 1 else "are",
            model_kind,
        )
    return Layout.PADDED


def choose_collator(model_kind: str, args: ORPOConfig, processor: Any, tokenizer: Any, model: Any = None) -> Collator:
    """The default collator of a trainer: for (model kind) x (padding_free, shared_prompt).

    ``processor`` is the trainer's processing class (the image processor's owner for vision
    models), ``tokenizer`` its text tokenizer, ``model`` the unwrapped model (None with
    ``model_init``; an encoder-decoder collator reads its decoder start token from it).
    """
    layout = choose_layout(model_kind, args.padding_free, args.shared_prompt)
    if model_kind == "vision":
        from ..vision import VisionORPODataCollator

        return VisionORPODataCollator.from_args(processor, args)
    if model_kind == "seq2seq":
        from ..seq2seq import Seq2SeqORPODataCollator

        return Seq2SeqORPODataCollator.from_args(model, tokenizer, args)
    from .packing import ORPOPackingCollator, ORPOSharedPromptCollator

    collator_class = {
        Layout.PADDED: ORPODataCollator,
        Layout.PACKED: ORPOPackingCollator,
        Layout.SHARED_PROMPT: ORPOSharedPromptCollator,
    }[layout]
    return collator_class(
        pad_token_id=args.padding_value if args.padding_value is not None else tokenizer.pad_token_id,
        label_pad_token_id=args.label_pad_token_id,
        pad_to_multiple_of=args.pad_to_multiple_of,
        nll_scope=args.nll_scope,
    )
