"""Encoder-decoder ORPO (T5, BART, ...): the prompt is the encoder input, completions are decoded.

Each pair becomes two decoder sequences that share the encoder input; the batch holds chosen rows
0..B-1 and rejected rows B..2B-1 (the encoder input repeated), so one forward pass scores both.

Decoder layout, with ``P`` the decoder prefix (``decoder_start_token_id``, then the BOS the model
is forced to generate first, if any: ``</s> <s>`` for BART, ``<pad>`` for T5) and ``C`` the
completion ending in exactly one EOS::

    decoder_input_ids = P + C            labels = -100 on P and padding, C elsewhere

Logits at decoder position t score ``labels[t + 1]``: the same shifted convention as causal
models, so the loss, the metrics and the fused LM head serve both unchanged.  The last decoder
position is run but never scored.

Length limits (:class:`Seq2SeqRowTokenizer`): the encoder input (with its special tokens) is cut
to ``max_prompt_length`` (``truncation_mode`` decides which end is kept); each completion, EOS
included, to ``max_completion_length``, or to ``max_length`` when that is None.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from orpo.data.load import ColumnMapping
from orpo.data.normalise import Batch, Normaliser
from orpo.data.policy import RowPolicies
from orpo.data.prepare import DataReport, prepare_dataset
from orpo.data.tokenize import (
    CHOSEN_TRUNCATED,
    FLAGS_COLUMN,
    PROMPT_TRUNCATED,
    REJECTED_TRUNCATED,
    TOKENIZED_COLUMNS,
    LengthLimits,
    SpecialTokens,
    finalize_completion,
    truncate_pair,
    whitespace_token_ids,
)
from orpo.scoring.collate import ORPODataCollator
from orpo.scoring.layouts import LAYOUT_KEY, SCORE_INDEX_KEY, Layout

logger = logging.getLogger(__name__)


# ---- encoder inputs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderSpecials:
    """The special tokens the tokenizer wraps a single sequence in (``<s> x </s>``, ``x </s>``).

    Attributes:
        prefix: the ids before the sequence (``<s>``), or none.
        suffix: the ids after it (``</s>``), or none.
        strip_bos: a BOS this tokenizer adds itself: leading copies written in the prompt text are dropped;
            None where it adds none.
    """

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    strip_bos: int | None  # a BOS this tokenizer adds itself: one written in the prompt text is dropped

    @classmethod
    def probe(cls, tokenizer: Any) -> EncoderSpecials:
        """The specials ``tokenizer`` adds, read off its encoding of ``"a"`` with and without them.

        Args:
            tokenizer: the model's tokenizer.
        """
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None)
        if start is None or not plain:  # pragma: no cover - every tokenizer encodes "a"
            return cls((), (), None)
        special = SpecialTokens.probe(tokenizer)
        return cls(
            tuple(full[:start]), tuple(full[start + len(plain) :]), special.bos_token_id if special.adds_bos else None
        )

    def wrap(self, ids: list[int], limit: int | None, keep_end: bool) -> tuple[list[int], bool]:
        """Prompt ids (no special tokens) -> encoder input within ``limit``; and whether it was cut.

        Args:
            ids: the prompt's token ids, without special tokens.
            limit: the most ids of the encoder input, its special tokens included; None: no limit.
            keep_end: keep the prompt's end (drop its start) when it is cut; False keeps the start.
        """
        if self.strip_bos is not None:
            start = 0
            while start < len(ids) and ids[start] == self.strip_bos:
                start += 1
            ids = ids[start:]
        cut = False
        if limit is not None:
            room = max(limit - len(self.prefix) - len(self.suffix), 0)
            if len(ids) > room:
                ids, cut = (ids[len(ids) - room :] if keep_end else ids[:room]), True
        return [*self.prefix, *ids, *self.suffix], cut


class Seq2SeqRowTokenizer:
    """Encoder-decoder rows: the prompt is the encoder input, with the tokenizer's own special
    tokens, cut to ``max_prompt_length``; each completion ends with one EOS and is cut to
    ``max_completion_length``, or to ``max_length`` when that is None (prompt and completion are
    separate sequences, so ``max_length`` does not bound their sum).

    A :class:`orpo.data.tokenize.RowTokenizer`; picklable for ``datasets.map``.

    Args:
        tokenizer: the model's tokenizer.
        limits: the length limits (``max_prompt_length`` for the encoder input, ``max_completion_length`` or
            ``max_length`` for each completion) and ``truncation_mode``.
    """

    def __init__(self, tokenizer: Any, limits: LengthLimits) -> None:
        self.tokenizer = tokenizer
        self.limits = limits
        self.normaliser = Normaliser(tokenizer)
        self.encoder = EncoderSpecials.probe(tokenizer)
        self.special = SpecialTokens.probe(tokenizer)
        self.whitespace_ids = whitespace_token_ids(tokenizer)
        self.completion_limit = limits.max_completion_length or limits.max_length

    def __call__(self, batch: Batch) -> Batch:
        prompts, chosens, rejecteds = (
            self.tokenizer(list(batch[name]), add_special_tokens=False)["input_ids"]
            for name in ("prompt", "chosen", "rejected")
        )
        completions = LengthLimits(max_completion_length=self.completion_limit)
        keep_end = self.limits.truncation_mode == "keep_end"
        out: Batch = {name: [] for name in (*TOKENIZED_COLUMNS, FLAGS_COLUMN)}
        for prompt, chosen, rejected in zip(prompts, chosens, rejecteds, strict=True):
            encoder, cut = self.encoder.wrap(prompt, self.limits.max_prompt_length, keep_end)
            chosen = finalize_completion(chosen, self.special, self.whitespace_ids)
            rejected = finalize_completion(rejected, self.special, self.whitespace_ids)
            _, chosen, rejected, flags = truncate_pair([], chosen, rejected, completions)
            out["prompt_input_ids"].append(encoder)
            out["chosen_input_ids"].append(chosen)
            out["rejected_input_ids"].append(rejected)
            out[FLAGS_COLUMN].append(flags | (PROMPT_TRUNCATED if cut else 0))
        return out

    def describe(self, flags: int) -> str:
        """Why a row was cut, in words, for the data report and errors.

        Args:
            flags: the row's truncation flags (``PROMPT_TRUNCATED``, ``CHOSEN_TRUNCATED``, ``REJECTED_TRUNCATED``).
        """
        parts = []
        if flags & PROMPT_TRUNCATED:
            parts.append(f"the prompt is longer than max_prompt_length={self.limits.max_prompt_length} encoder tokens")
        which = [name for name, bit in (("chosen", CHOSEN_TRUNCATED), ("rejected", REJECTED_TRUNCATED)) if flags & bit]
        if which:
            limit = (
                f"max_completion_length={self.limits.max_completion_length}"
                if self.limits.max_completion_length
                else f"max_length={self.limits.max_length} (the decoder's limit without max_completion_length)"
            )
            parts.append(f"{' and '.join(which)} is longer than {limit}")
        return "; ".join(parts) or "over a length limit"


def prepare_seq2seq_dataset(
    data: Any, tokenizer: Any, args: Any, split: str = "train", columns: ColumnMapping | None = None
) -> tuple[Any, DataReport]:
    """Validate, normalise and tokenize preference data for an encoder-decoder model, by ``args``.

    The same formats, checks, policies, errors and report as
    :func:`orpo.data.prepare_preference_dataset`, with :class:`Seq2SeqRowTokenizer`.

    Args:
        data: preference data (a Dataset, list of dicts, dict of lists, DataFrame...).
        tokenizer: the model's tokenizer.
        args: an ``ORPOConfig`` (length limits, row policies, ``dataset_num_proc``, ``nll_scope``).
        split: the split's name, for messages and the report.
        columns: how the data's column names map to orpo's; None: the usual names.

    Returns:
        (the tokenized dataset, its :class:`~orpo.data.prepare.DataReport`).

    Raises:
        DataError: the data cannot be read or validated, or no pair is left.
    """
    if args.nll_scope == "prompt_and_completion":
        logger.warning(
            "nll_scope='prompt_and_completion' has no prompt to score for an encoder-decoder model "
            "(the prompt is the encoder input); the NLL covers the chosen completion"
        )
    row_tokenizer = Seq2SeqRowTokenizer(tokenizer, LengthLimits.from_args(args))
    return prepare_dataset(data, row_tokenizer, RowPolicies.from_args(args), split, columns, args.dataset_num_proc)


# ---- batching ----------------------------------------------------------------------------------


def decoder_prefix(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """``(decoder_start_token_id[, forced BOS])`` for ``model``: what generation starts the decoder with.

    The start token falls back to the pad token (with a warning), the forced BOS to the BOS the tokenizer adds.

    Args:
        model: the encoder-decoder model (its generation config and config); None under ``model_init``.
        tokenizer: its tokenizer.

    Raises:
        ValueError: no decoder start token and no pad token.
    """
    config = getattr(model, "config", None)
    generation = getattr(model, "generation_config", None)
    start = next(
        (
            v
            for v in (
                getattr(generation, "decoder_start_token_id", None),
                getattr(config, "decoder_start_token_id", None),
            )
            if v is not None
        ),
        None,
    )
    if isinstance(start, list):
        start = start[0]
    if start is None:
        start = tokenizer.pad_token_id
        logger.warning(
            "%s; starting decoder sequences with the pad token %s (as T5 does)",
            "no model to read decoder_start_token_id from (model_init)"
            if model is None
            else "the model has no decoder_start_token_id",
            start,
        )
    if start is None:
        raise ValueError("encoder-decoder training needs config.decoder_start_token_id (or a tokenizer pad token)")
    forced = next(
        (
            v
            for v in (getattr(generation, "forced_bos_token_id", None), getattr(config, "forced_bos_token_id", None))
            if v is not None
        ),
        None,
    )
    if forced is None:
        special = SpecialTokens.probe(tokenizer)
        if special.adds_bos and special.bos_token_id is not None and special.bos_token_id != start:
            forced = special.bos_token_id
    return (int(start),) if forced is None else (int(start), int(forced))


@dataclass
class Seq2SeqORPODataCollator:
    """Pads B pairs into 2B encoder rows and 2B decoder rows (chosen 0..B-1, rejected B..2B-1).

    Attributes:
        pad_token_id: the id encoder and decoder inputs are padded with.
        decoder_prefix: what each decoder sequence starts with (:func:`decoder_prefix`); at least one id.
        label_pad_token_id: the label of unscored positions.
        pad_to_multiple_of: round padded lengths up to a multiple of this; None: no rounding.
    """

    pad_token_id: int
    decoder_prefix: tuple[int, ...]
    label_pad_token_id: int = -100
    pad_to_multiple_of: int | None = None
    _decoder: ORPODataCollator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.decoder_prefix = tuple(int(t) for t in self.decoder_prefix)
        if not self.decoder_prefix:
            raise ValueError("decoder_prefix needs at least the decoder start token")
        self._decoder = ORPODataCollator(
            self.pad_token_id, self.label_pad_token_id, self.pad_to_multiple_of, "completion"
        )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        prefix = list(self.decoder_prefix)
        decoder = self._decoder(
            [
                {
                    "prompt_input_ids": prefix,
                    "chosen_input_ids": f["chosen_input_ids"],
                    "rejected_input_ids": f["rejected_input_ids"],
                }
                for f in features
            ]
        )
        prompts = [list(f["prompt_input_ids"]) for f in features] * 2
        length = max(max(len(p) for p in prompts), 1)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(prompts), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "decoder_input_ids": decoder["input_ids"],
            "decoder_attention_mask": decoder["attention_mask"],
            "labels": decoder["labels"],
        }
        if "orpo_row_index" in features[0]:  # dataset rows, for reports on bad batches (orpo.training.reliability)
            batch["orpo_row_index"] = torch.tensor([int(f["orpo_row_index"]) for f in features], dtype=torch.long)
        batch[SCORE_INDEX_KEY] = decoder[SCORE_INDEX_KEY]  # over the decoder's labels, which the scores follow
        batch[LAYOUT_KEY] = Layout.PADDED
        return batch

    @classmethod
    def from_args(cls, model: Any, tokenizer: Any, args: Any) -> Seq2SeqORPODataCollator:
        """The collator an ``ORPOConfig`` asks for.

        Args:
            model: the model (its decoder start token; see :func:`decoder_prefix`).
            tokenizer: its tokenizer (the pad token unless ``args.padding_value`` is set).
            args: an ``ORPOConfig`` (``padding_value``, ``label_pad_token_id``, ``pad_to_multiple_of``).
        """
        pad = args.padding_value if args.padding_value is not None else tokenizer.pad_token_id
        return cls(pad, decoder_prefix(model, tokenizer), args.label_pad_token_id, args.pad_to_multiple_of)
