"""Batching of tokenized pairs into one concatenated chosen+rejected batch, and the choice of
collator for a model kind and the speed switches."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from orpo.scoring.layouts import LAYOUT_KEY, SCORE_INDEX_KEY, Layout, score_positions

if TYPE_CHECKING:
    from orpo.config.orpo_config import ORPOConfig

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


class LayoutChoice(NamedTuple):
    """The layout a trainer collates in, the per-segment attention that runs it, and why."""

    layout: Layout
    implementation: str | None  # one of orpo.scoring.attention.IMPLEMENTATIONS' names; None for padded
    reason: str

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` switched to the attention that runs the layout (padded forwards keep the model's own)."""
        if self.implementation is not None:
            from orpo.scoring.routing import use_segment_attention

            use_segment_attention(model, self.implementation)
        return model


def choose_layout(
    model_kind: str, requested: str, model: torch.nn.Module, rows_split: str | None = None
) -> LayoutChoice:
    """The batch layout for a model kind ("causal", "vision", "seq2seq"), the requested layout
    (``ORPOArguments.requested_layout``: "auto" or a layout's name) and the model, logged in one line.

    "auto" takes shared_prompt where the model's attention runs it per segment, else
    padding_free, else padded (:func:`orpo.scoring.routing.best_layout`).  A requested row layout the
    model cannot run runs padded, with a warning saying why; so does any row layout for
    vision-language and encoder-decoder models (whose rows hold more than token sequences) and
    where something splits batches by rows (``rows_split`` says what: a row layout has one row).
    """
    from orpo.scoring.routing import best_layout

    if model_kind != "causal" or rows_split:
        why = f"{model_kind} models take padded batches only" if model_kind != "causal" else rows_split
        choice = LayoutChoice(Layout.PADDED, None, str(why))
        if requested in ("auto", "padded"):
            logger.info("layout: padded (%s)", choice.reason)
        else:
            logger.warning("layout %s is not supported: %s; using padded batches", requested, choice.reason)
        return choice
    wanted = None if requested == "auto" else Layout(requested)
    layout, route = best_layout(model, wanted)
    origin = "auto" if wanted is None else "requested"
    if route.implementation is not None:
        choice = LayoutChoice(layout, route.implementation, f"{origin}: attention {route.implementation} runs it")
    elif wanted is Layout.PADDED:
        choice = LayoutChoice(layout, None, origin)
    else:
        choice = LayoutChoice(layout, None, f"{origin}: no per-segment attention for this model ({route.reason})")
        if wanted is not None:
            logger.warning("layout %s cannot run here (%s); using padded batches", requested, route.reason)
            return choice
    logger.info("layout: %s (%s)", choice.layout.value, choice.reason)
    return choice


def layout_and_collator(
    model_kind: str,
    args: ORPOConfig,
    processor: Any,
    tokenizer: Any,
    model: torch.nn.Module | None,
    padded: Collator,
    train_dataset: Any = None,
) -> tuple[LayoutChoice, Collator]:
    """A trainer's layout (:func:`choose_layout`), its ``model`` switched to the attention that runs
    it, and the collator of that layout (``padded``, the padded one already built, if padded)."""
    import datasets

    assert model is not None, "Trainer.__init__ resolves model or model_init to a model"
    rows_split = None
    if isinstance(train_dataset, datasets.IterableDataset | torch.utils.data.IterableDataset):
        rows_split = "streamed training data: accelerate splits its batches by rows"
    elif args.n_gpu > 1:
        rows_split = f"{args.n_gpu} GPUs in one process: torch.nn.DataParallel splits batches by rows"
    choice = choose_layout(model_kind, args.requested_layout(), model, rows_split)
    choice.apply(model)
    if choice.layout is Layout.PADDED:
        return choice, padded
    return choice, choose_collator(model_kind, args, processor, tokenizer, layout=choice.layout)


def choose_collator(
    model_kind: str,
    args: ORPOConfig,
    processor: Any,
    tokenizer: Any,
    model: Any = None,
    layout: Layout = Layout.PADDED,
) -> Collator:
    """The default collator of a trainer: for (model kind) x layout.

    ``processor`` is the trainer's processing class (the image processor's owner for vision
    models), ``tokenizer`` its text tokenizer, ``model`` the unwrapped model (None with
    ``model_init``; an encoder-decoder collator reads its decoder start token from it).
    """
    if model_kind == "vision":
        from orpo.models.vision import VisionORPODataCollator

        return VisionORPODataCollator.from_args(processor, args)
    if model_kind == "seq2seq":
        from orpo.models.encoder_decoder import Seq2SeqORPODataCollator

        return Seq2SeqORPODataCollator.from_args(model, tokenizer, args)
    from orpo.scoring.packing import ORPOPackingCollator, ORPOSharedPromptCollator

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
