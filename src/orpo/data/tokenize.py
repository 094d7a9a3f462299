"""Tokenization of (prompt, chosen, rejected) text triples, and the row-tokenizer protocol.

:class:`RowTokenizer` is what each kind of model plugs into the one preparation pipeline
(:mod:`orpo.data.prepare`): :class:`PairTokenizer` here for causal LMs, the processor-based
one in :mod:`orpo.models.vision.rows`, the encoder-decoder one in :mod:`orpo.models.encoder_decoder`.  Each
returns token ids plus flags of what the length limits cut; the pipeline decides with them.

The prompt and each completion are tokenized separately so the prompt/completion boundary is
exact in token space.  Invariants: BOS at most once and only where the tokenizer uses one;
EOS exactly once at the end of every untruncated completion; a completion cut to nothing
drops its pair (counted, never a NaN later).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from transformers import PreTrainedTokenizerBase

from .normalise import Batch, Normaliser

# Bit flags of what the length limits do to a row, counted into the TokenizeReport.
PROMPT_TRUNCATED = 1
CHOSEN_TRUNCATED = 2
REJECTED_TRUNCATED = 4
NO_ROOM_FOR_COMPLETION = 8
#: A prompt limit would cut into image placeholder tokens (vision-language rows).
IMAGE_TRUNCATED = 16
#: Flags of rows that no truncation turns into a usable pair: dropped whatever on_too_long says (or an error).
UNUSABLE = NO_ROOM_FOR_COMPLETION | IMAGE_TRUNCATED

TOKENIZED_COLUMNS = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")
FLAGS_COLUMN = "tokenize_flags"


@dataclass(frozen=True)
class LengthLimits:
    """The length limits of tokenized rows, in tokens (ORPOConfig's fields of the same names).

    Attributes:
        max_length: prompt plus completion (causal models; the decoder's limit for encoder-decoders without
            ``max_completion_length``); None: no limit.
        max_prompt_length: the prompt; None: no limit.
        max_completion_length: each completion, EOS included; None: no limit.
        truncation_mode: ``"keep_end"`` or ``"keep_start"``: which end of a long prompt is kept.
    """

    max_length: int | None = None
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    truncation_mode: str = "keep_end"

    @classmethod
    def from_args(cls, args: Any) -> LengthLimits:
        """The limits of an ``ORPOConfig``.

        Args:
            args: an ``ORPOConfig``.
        """
        return cls(args.max_length, args.max_prompt_length, args.max_completion_length, args.truncation_mode)


@dataclass
class SpecialTokens:
    """How this tokenizer marks sequence starts and ends, probed once.

    Attributes:
        bos_token_id: the BOS id, or None.
        eos_token_id: the EOS id, appended to every completion.
        adds_bos: whether the tokenizer puts BOS first when it adds special tokens (then prompts start with one).
    """

    bos_token_id: int | None
    eos_token_id: int
    adds_bos: bool

    @classmethod
    def probe(cls, tokenizer: PreTrainedTokenizerBase) -> SpecialTokens:
        """Read the specials off ``tokenizer`` (its encoding of ``"a"`` tells whether it adds BOS).

        Args:
            tokenizer: the model's tokenizer.

        Raises:
            ValueError: it has no EOS token.
        """
        if tokenizer.eos_token_id is None:
            raise ValueError(
                "the tokenizer has no eos_token: ORPO appends EOS to every completion so the model learns to stop; "
                "set tokenizer.eos_token (e.g. to the chat template's end-of-turn token)"
            )
        bos = tokenizer.bos_token_id
        probe_ids = tokenizer("a", add_special_tokens=True)["input_ids"]
        adds_bos = bos is not None and len(probe_ids) > 0 and probe_ids[0] == bos
        return cls(bos_token_id=bos, eos_token_id=tokenizer.eos_token_id, adds_bos=adds_bos)


@dataclass
class TokenizeReport:
    """What tokenization did to the rows: nothing is changed or dropped without a count here.

    Attributes:
        rows_in: rows tokenized.
        rows_out: rows kept.
        prompt_truncated: rows whose prompt was cut (kept or dropped).
        chosen_truncated: rows whose chosen completion was cut.
        rejected_truncated: rows whose rejected completion was cut.
        dropped_no_room_for_completion: rows dropped because the prompt fills ``max_length``.
        dropped_image_truncated: rows dropped because a prompt limit would cut image tokens.
        dropped_too_long: rows dropped for being over a limit (``on_too_long="drop"``).
        dropped_rows: the indices of the dropped rows (in the tokenized data).
    """

    rows_in: int = 0
    rows_out: int = 0
    prompt_truncated: int = 0
    chosen_truncated: int = 0
    rejected_truncated: int = 0
    dropped_no_room_for_completion: int = 0
    dropped_image_truncated: int = 0
    dropped_too_long: int = 0
    dropped_rows: list[int] = field(default_factory=list)

    def count_truncations(self, flags: int) -> None:
        """Count one row's cuts.

        Args:
            flags: the row's truncation flags.
        """
        self.prompt_truncated += bool(flags & PROMPT_TRUNCATED)
        self.chosen_truncated += bool(flags & CHOSEN_TRUNCATED)
        self.rejected_truncated += bool(flags & REJECTED_TRUNCATED)

    def summary(self) -> str:
        """One line: pairs kept of those read, then each kind of cut and drop that happened."""
        parts = [f"{self.rows_out}/{self.rows_in} pairs kept"]
        for name in ("prompt_truncated", "chosen_truncated", "rejected_truncated"):
            if getattr(self, name):
                parts.append(f"{getattr(self, name)} {name.replace('_', ' ')}")
        if self.dropped_no_room_for_completion:
            parts.append(f"{self.dropped_no_room_for_completion} dropped: prompt leaves no room for a completion")
        if self.dropped_image_truncated:
            parts.append(f"{self.dropped_image_truncated} dropped: the prompt limit would cut image tokens")
        if self.dropped_too_long:
            parts.append(f"{self.dropped_too_long} dropped: over a length limit (on_too_long='drop')")
        return "; ".join(parts)


def _cut(ids: Sequence[int], limit: int | None, keep_end: bool) -> Sequence[int]:
    if limit is None or len(ids) <= limit:
        return ids
    return ids[-limit:] if keep_end else ids[:limit]


def finalize_prompt(ids: list[int], special: SpecialTokens) -> list[int]:
    """Ensure exactly one leading BOS when the tokenizer uses BOS (templates often add it too).

    Args:
        ids: the prompt's token ids.
        special: the tokenizer's specials (:meth:`SpecialTokens.probe`).
    """
    if not special.adds_bos or special.bos_token_id is None:
        return ids
    bos = special.bos_token_id
    start = 0
    while start < len(ids) and ids[start] == bos:
        start += 1
    return [bos, *ids[start:]]


def finalize_completion(ids: list[int], special: SpecialTokens, whitespace_ids: frozenset[int]) -> list[int]:
    """End the completion with exactly one EOS.

    A chat template usually renders the end-of-turn token followed by a newline; if that
    token is the EOS, the trailing whitespace is dropped rather than appending a second EOS.

    Args:
        ids: the completion's token ids.
        special: the tokenizer's specials.
        whitespace_ids: ids of whitespace-only tokens (:func:`whitespace_token_ids`).
    """
    eos = special.eos_token_id
    end = len(ids)
    while end > 0 and ids[end - 1] in whitespace_ids:
        end -= 1
    if end > 0 and ids[end - 1] == eos:
        return ids[:end]
    return [*ids, eos]


def whitespace_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids of tokens that decode to pure whitespace (e.g. the '\\n' after an end-of-turn).

    Args:
        tokenizer: the model's tokenizer; common whitespace strings that it encodes as one token are collected.
    """
    ids = set()
    for text in ("\n", "\n\n", " ", "  ", "\t", " \n"):
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) == 1:
            ids.add(encoded[0])
    return frozenset(ids)


def _cut_prompt(ids: Sequence[int], limit: int | None, keep_end: bool, bos_token_id: int | None) -> Sequence[int]:
    """Cut the prompt; ``keep_end`` keeps a leading BOS (the model always saw one at position 0)."""
    if keep_end and bos_token_id is not None and limit is not None and len(ids) > limit > 1 and ids[0] == bos_token_id:
        return [ids[0], *ids[len(ids) - limit + 1 :]]
    return _cut(ids, limit, keep_end)


def truncate_pair(
    prompt: Sequence[int],
    chosen: Sequence[int],
    rejected: Sequence[int],
    limits: LengthLimits,
    bos_token_id: int | None = None,
) -> tuple[Sequence[int], Sequence[int], Sequence[int], int]:
    """Apply the length limits; returns the cut ids and the flags of what was cut.

    Lists in, lists out; :mod:`orpo.cli.inspect_stats` passes ``range`` objects to measure lengths only.

    Order: prompt to ``max_prompt_length`` (by ``truncation_mode``; with ``keep_end`` a leading
    ``bos_token_id`` stays first), each completion to ``max_completion_length`` (keeping its
    start), then each completion to what ``max_length`` leaves after the prompt.  If that is
    nothing, NO_ROOM_FOR_COMPLETION is set.

    Args:
        prompt: the prompt's ids.
        chosen: the chosen completion's ids.
        rejected: the rejected completion's ids.
        limits: the length limits.
        bos_token_id: a BOS that ``keep_end`` keeps first; None: none kept.
    """
    flags = 0
    keep_end = limits.truncation_mode == "keep_end"
    cut_prompt = _cut_prompt(prompt, limits.max_prompt_length, keep_end, bos_token_id)
    if len(cut_prompt) < len(prompt):
        flags |= PROMPT_TRUNCATED
    room = limits.max_completion_length
    if limits.max_length is not None:
        left = limits.max_length - len(cut_prompt)
        if left < 1:
            return cut_prompt, [], [], flags | NO_ROOM_FOR_COMPLETION
        room = left if room is None else min(room, left)
    cut_chosen = _cut(chosen, room, keep_end=False)
    cut_rejected = _cut(rejected, room, keep_end=False)
    if len(cut_chosen) < len(chosen):
        flags |= CHOSEN_TRUNCATED
    if len(cut_rejected) < len(rejected):
        flags |= REJECTED_TRUNCATED
    return cut_prompt, cut_chosen, cut_rejected, flags


def describe_flags(flags: int, limits: LengthLimits) -> str:
    """What ``limits`` do to a row with these flags, for a causal model (prompt + completion <= max_length).

    Args:
        flags: the row's truncation flags.
        limits: the limits that set them.
    """
    if flags & NO_ROOM_FOR_COMPLETION:
        return f"the prompt fills max_length={limits.max_length} and leaves no room for a completion"
    parts = []
    if flags & PROMPT_TRUNCATED:
        parts.append(f"the prompt is longer than max_prompt_length={limits.max_prompt_length}")
    if flags & (CHOSEN_TRUNCATED | REJECTED_TRUNCATED):
        which = " and ".join(
            name for name, bit in (("chosen", CHOSEN_TRUNCATED), ("rejected", REJECTED_TRUNCATED)) if flags & bit
        )
        parts.append(
            f"{which} does not fit (max_length={limits.max_length}, max_completion_length={limits.max_completion_length})"
        )
    return "; ".join(parts) or "over a length limit"


class RowTokenizer(Protocol):
    """One kind of model's tokenization, plugged into :func:`orpo.data.prepare.prepare_dataset`.

    The normaliser and the tokenizer itself run under ``datasets.map``: both must pickle and hold
    only what decides their output, so that a second run on the same data with the same settings
    is served from the ``datasets`` cache.
    """

    @property
    def normaliser(self) -> Callable[[Batch], Batch]:
        """Canonical columns -> texts and the format/empty (/key) columns of :mod:`orpo.data.normalise`."""
        ...

    def __call__(self, batch: Batch) -> Batch:
        """Normalised rows -> :data:`TOKENIZED_COLUMNS` and :data:`FLAGS_COLUMN`."""
        ...

    def describe(self, flags: int) -> str:
        """What the length limits do to a row with these flags, naming the limits (for errors).

        Args:
            flags: the row's truncation flags.
        """
        ...


class PairTokenizer:
    """Causal-LM rows: prompt and completions tokenized separately, so the boundary is exact.

    A :class:`RowTokenizer`; picklable so ``datasets.map`` can run it in workers and fingerprint it.

    Args:
        tokenizer: the model's tokenizer (it needs an EOS token).
        limits: the length limits and truncation mode.
        template_kwargs: extra keyword arguments of the chat template (``chat_template_kwargs``).
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, limits: LengthLimits, template_kwargs: dict[str, Any] | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.limits = limits
        self.normaliser = Normaliser(tokenizer, template_kwargs)
        self.special = SpecialTokens.probe(tokenizer)
        self.whitespace_ids = whitespace_token_ids(tokenizer)
        # The BOS that finalize_prompt puts first, kept there when keep_end truncation cuts the prompt.
        self.bos_to_keep = self.special.bos_token_id if self.special.adds_bos else None

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens.

        Args:
            texts: the texts.
        """
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def __call__(self, batch: Batch) -> Batch:
        prompts = self.encode(batch["prompt"])
        chosens = self.encode(batch["chosen"])
        rejecteds = self.encode(batch["rejected"])
        out: Batch = {name: [] for name in (*TOKENIZED_COLUMNS, FLAGS_COLUMN)}
        for prompt, chosen, rejected in zip(prompts, chosens, rejecteds, strict=True):
            prompt = finalize_prompt(prompt, self.special)
            chosen = finalize_completion(chosen, self.special, self.whitespace_ids)
            rejected = finalize_completion(rejected, self.special, self.whitespace_ids)
            cut = truncate_pair(prompt, chosen, rejected, self.limits, self.bos_to_keep)
            for name, ids in zip(TOKENIZED_COLUMNS, cut[:3], strict=True):
                out[name].append(ids)
            out[FLAGS_COLUMN].append(cut[3])
        return out

    def describe(self, flags: int) -> str:
        """What the limits do to a row with these flags (:func:`describe_flags`).

        Args:
            flags: the row's truncation flags.
        """
        return describe_flags(flags, self.limits)

    def one(self, prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
        """Tokenize a single triple (for inspection and tests).

        Args:
            prompt: the rendered prompt text.
            chosen: the chosen completion's text.
            rejected: the rejected completion's text.
        """
        result = self({"prompt": [prompt], "chosen": [chosen], "rejected": [rejected]})
        return {key: values[0] for key, values in result.items()}
