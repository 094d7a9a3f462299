"""Tokenization of (prompt, chosen, rejected) text triples.

The prompt and each completion are tokenized separately so the prompt/completion boundary is
exact in token space.  Invariants: BOS at most once and only where the tokenizer uses one;
EOS exactly once at the end of every untruncated completion; a completion cut to nothing
drops its pair (counted, never a NaN later).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

# Bit flags recorded per row, counted into the TokenizeReport.
PROMPT_TRUNCATED = 1
CHOSEN_TRUNCATED = 2
REJECTED_TRUNCATED = 4
NO_ROOM_FOR_COMPLETION = 8

TOKENIZED_COLUMNS = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")


@dataclass(frozen=True)
class LengthLimits:
    max_length: int | None = None
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    truncation_mode: str = "keep_end"

    @classmethod
    def from_args(cls, args: Any) -> LengthLimits:
        return cls(args.max_length, args.max_prompt_length, args.max_completion_length, args.truncation_mode)


@dataclass
class SpecialTokens:
    """How this tokenizer marks sequence starts and ends, probed once."""

    bos_token_id: int | None
    eos_token_id: int
    adds_bos: bool

    @classmethod
    def probe(cls, tokenizer: PreTrainedTokenizerBase) -> SpecialTokens:
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
    """What tokenization did to the rows: nothing is changed or dropped without a count here."""

    rows_in: int = 0
    rows_out: int = 0
    prompt_truncated: int = 0
    chosen_truncated: int = 0
    rejected_truncated: int = 0
    dropped_no_room_for_completion: int = 0
    dropped_too_long: int = 0
    dropped_rows: list[int] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.rows_out}/{self.rows_in} pairs kept"]
        for name in ("prompt_truncated", "chosen_truncated", "rejected_truncated"):
            if getattr(self, name):
                parts.append(f"{getattr(self, name)} {name.replace('_', ' ')}")
        if self.dropped_no_room_for_completion:
            parts.append(f"{self.dropped_no_room_for_completion} dropped: prompt leaves no room for a completion")
        if self.dropped_too_long:
            parts.append(f"{self.dropped_too_long} dropped: over a length limit (on_too_long='drop')")
        return "; ".join(parts)


def _cut(ids: list[int], limit: int | None, keep_end: bool) -> list[int]:
    if limit is None or len(ids) <= limit:
        return ids
    return ids[-limit:] if keep_end else ids[:limit]


def finalize_prompt(ids: list[int], special: SpecialTokens) -> list[int]:
    """Ensure exactly one leading BOS when the tokenizer uses BOS (templates often add it too)."""
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
    """
    eos = special.eos_token_id
    end = len(ids)
    while end > 0 and ids[end - 1] in whitespace_ids:
        end -= 1
    if end > 0 and ids[end - 1] == eos:
        return ids[:end]
    return [*ids, eos]


def whitespace_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids of tokens that decode to pure whitespace (e.g. the '\\n' after an end-of-turn)."""
    ids = set()
    for text in ("\n", "\n\n", " ", "  ", "\t", " \n"):
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) == 1:
            ids.add(encoded[0])
    return frozenset(ids)


def _cut_prompt(ids: list[int], limit: int | None, keep_end: bool, bos_token_id: int | None) -> list[int]:
    """Cut the prompt; ``keep_end`` keeps a leading BOS (the model always saw one at position 0)."""
    if keep_end and bos_token_id is not None and limit is not None and len(ids) > limit > 1 and ids[0] == bos_token_id:
        return [ids[0], *ids[len(ids) - limit + 1 :]]
    return _cut(ids, limit, keep_end)


def truncate_pair(
    prompt: list[int],
    chosen: list[int],
    rejected: list[int],
    limits: LengthLimits,
    bos_token_id: int | None = None,
) -> tuple[list[int], list[int], list[int], int]:
    """Apply the length limits; returns the cut ids and the flags of what was cut.

    Order: prompt to ``max_prompt_length`` (by ``truncation_mode``; with ``keep_end`` a leading
    ``bos_token_id`` stays first), each completion to ``max_completion_length`` (keeping its
    start), then each completion to what ``max_length`` leaves after the prompt.  If that is
    nothing, NO_ROOM_FOR_COMPLETION is set.
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


class PairTokenizer:
    """Tokenizes batches of text triples; picklable so ``datasets.map`` can run it in workers
    and fingerprint it for its cache."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, limits: LengthLimits) -> None:
        self.tokenizer = tokenizer
        self.limits = limits
        self.special = SpecialTokens.probe(tokenizer)
        self.whitespace_ids = whitespace_token_ids(tokenizer)
        # The BOS that finalize_prompt puts first, kept there when keep_end truncation cuts the prompt.
        self.bos_to_keep = self.special.bos_token_id if self.special.adds_bos else None

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        prompts = self.encode(batch["prompt"])
        chosens = self.encode(batch["chosen"])
        rejecteds = self.encode(batch["rejected"])
        out: dict[str, list[Any]] = {name: [] for name in (*TOKENIZED_COLUMNS, "tokenize_flags")}
        for prompt, chosen, rejected in zip(prompts, chosens, rejecteds, strict=True):
            prompt = finalize_prompt(prompt, self.special)
            chosen = finalize_completion(chosen, self.special, self.whitespace_ids)
            rejected = finalize_completion(rejected, self.special, self.whitespace_ids)
            prompt, chosen, rejected, flags = truncate_pair(prompt, chosen, rejected, self.limits, self.bos_to_keep)
            out["prompt_input_ids"].append(prompt)
            out["chosen_input_ids"].append(chosen)
            out["rejected_input_ids"].append(rejected)
            out["tokenize_flags"].append(flags)
        return out

    def one(self, prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
        """Tokenize a single triple (for inspection and tests)."""
        result = self({"prompt": [prompt], "chosen": [chosen], "rejected": [rejected]})
        return {key: values[0] for key, values in result.items()}


def tokenize_dataset(
    dataset: Any,
    tokenizer: PreTrainedTokenizerBase,
    limits: LengthLimits,
    on_too_long: str = "truncate",
    num_proc: int | None = None,
    description: str = "train",
) -> tuple[Any, TokenizeReport]:
    """Tokenize a ``datasets.Dataset`` with prompt/chosen/rejected text columns.

    Returns the tokenized dataset (text columns kept, for generation and inspection) and a
    report.  ``on_too_long``: "truncate" keeps truncated rows, "drop" removes every row that a
    limit would cut, "error" raises naming the first such row.
    """
    pair_tokenizer = PairTokenizer(tokenizer, limits)
    tokenized = dataset.map(
        pair_tokenizer,
        batched=True,
        num_proc=num_proc if num_proc and num_proc > 1 and len(dataset) >= 2 * num_proc else None,
        desc=f"Tokenizing {description} pairs",
    )
    flags = tokenized.with_format("arrow")["tokenize_flags"].to_pylist()
    report = TokenizeReport(rows_in=len(dataset))
    keep = apply_length_policy(flags, report, limits, on_too_long, description)
    if len(keep) < len(tokenized):
        tokenized = tokenized.select(keep)
    return tokenized.remove_columns("tokenize_flags"), report


def apply_length_policy(
    flags: Sequence[int],
    report: TokenizeReport,
    limits: LengthLimits,
    on_too_long: str,
    description: str,
    skip: Collection[int] = (),
    fatal: Sequence[tuple[int, str]] = ((NO_ROOM_FOR_COMPLETION, "dropped_no_room_for_completion"),),
    fatal_message: str | None = None,
) -> list[int]:
    """Count each row's truncation ``flags`` into ``report`` and return the indices of the rows to keep.

    Shared by the text and vision paths so both apply ``on_too_long`` the same way.  A row with a
    ``fatal`` flag cannot be truncated into a usable pair: it is dropped (counted in the report field
    paired with its first fatal flag) unless ``on_too_long="error"``, which raises with
    ``fatal_message``.  Rows in ``skip`` (already dropped by other policies) are not counted.
    """
    if fatal_message is None:
        fatal_message = (
            f"the prompt fills max_length={limits.max_length} and leaves no room for a completion "
            "(raise max_length, set max_prompt_length, or use on_too_long='drop')"
        )
    fatal_mask = 0
    for bit, _ in fatal:
        fatal_mask |= bit
    keep: list[int] = []
    for index, flag in enumerate(flags):
        if index in skip:
            continue
        report.prompt_truncated += bool(flag & PROMPT_TRUNCATED)
        report.chosen_truncated += bool(flag & CHOSEN_TRUNCATED)
        report.rejected_truncated += bool(flag & REJECTED_TRUNCATED)
        if flag & fatal_mask:
            if on_too_long == "error":
                raise ValueError(f"{description} row {index}: {fatal_message}")
            counter = next(name for bit, name in fatal if flag & bit)
            setattr(report, counter, getattr(report, counter) + 1)
            report.dropped_rows.append(index)
        elif flag and on_too_long != "truncate":
            if on_too_long == "error":
                raise ValueError(
                    f"{description} row {index}: longer than the length limits (max_length={limits.max_length}, "
                    f"max_prompt_length={limits.max_prompt_length}, "
                    f"max_completion_length={limits.max_completion_length}); "
                    "use on_too_long='truncate' or 'drop', or raise the limits"
                )
            report.dropped_too_long += 1
            report.dropped_rows.append(index)
        else:
            keep.append(index)
    report.rows_out = len(keep)
    return keep
