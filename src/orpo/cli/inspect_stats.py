"""The numbers behind ``orpo data inspect`` (the example it shows is :mod:`orpo.cli.inspect_example`'s).

Lengths count the BOS/EOS that orpo adds and truncation is measured with the training code's own
``truncate_pair``, so what is shown is what training does.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orpo.cli.inspect_example import render_example
from orpo.data.errors import DataError

PROG = "orpo data inspect"
LENGTH_KEYS = ("prompt", "chosen", "rejected", "pair")
PERCENTILES = (50, 90, 99)


def config_defaults() -> dict[str, Any]:
    """ORPOConfig's defaults for the limits and row policies (its ORPO fields: no transformers import)."""
    from orpo.config.arguments import ORPOArguments

    names = (
        "max_length",
        "max_prompt_length",
        "max_completion_length",
        "truncation_mode",
        "on_identical_pair",
        "on_empty_completion",
        "on_duplicate",
        "on_empty_prompt",
        "on_too_long",
    )
    return {f.name: f.default for f in dataclasses.fields(ORPOArguments) if f.name in names}


def percentile(values: Sequence[int], p: float) -> int:
    """Nearest-rank percentile: the smallest value with at least p% of the values <= it."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class LengthStats:
    p50: int = 0
    p90: int = 0
    p99: int = 0
    max: int = 0

    @classmethod
    def of(cls, values: Sequence[int]) -> LengthStats:
        p50, p90, p99 = (percentile(values, p) for p in PERCENTILES)
        return cls(p50, p90, p99, max(values, default=0))


@dataclass
class InspectReport:
    """Every number ``orpo data inspect`` prints (tokens include the BOS/EOS orpo adds)."""

    source: str = ""
    split: str = "train"
    rows: int = 0
    other_splits: dict[str, int] = field(default_factory=dict)
    formats: Counter = field(default_factory=Counter)
    tokenizer: str = ""
    tokenizer_note: str = ""
    lengths: dict[str, LengthStats] = field(default_factory=dict)
    limits: Any = None
    prompt_truncated: int = 0
    chosen_truncated: int = 0
    rejected_truncated: int = 0
    over_limit: int = 0
    no_room: int = 0
    chosen_longer: int = 0
    rejected_longer: int = 0
    same_length: int = 0
    identical: int = 0
    empty: int = 0
    empty_prompts: int = 0
    duplicates: int = 0
    distinct_prompts: int = 0
    max_prompt_repeats: int = 0
    policies: dict[str, str] = field(default_factory=dict)
    example: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def length_bias(self) -> float:
        """Fraction of rows whose chosen completion has more tokens than the rejected one."""
        return self.chosen_longer / self.rows if self.rows else 0.0

    def render(self) -> str:
        pct = lambda n: f"{100 * n / self.rows:.1f}%" if self.rows else "0%"  # noqa: E731
        lines = [f"{PROG}: {self.source} [{self.split}]"]
        lines.append(f"tokenizer: {self.tokenizer}")
        if self.tokenizer_note:
            lines.append(f"  note: {self.tokenizer_note}")
        lines.append("")
        others = "".join(f", {name}: {count}" for name, count in self.other_splits.items())
        lines.append(f"rows:     {self.rows}{' (other splits' + others[1:] + ')' if others else ''}")
        lines.append("formats:  " + ", ".join(f"{name} {count}" for name, count in self.formats.most_common()))
        repeats = f" (a prompt repeats up to {self.max_prompt_repeats} times)" if self.max_prompt_repeats > 1 else ""
        lines.append(f"prompts:  {self.distinct_prompts} distinct{repeats}")
        lines.append("")
        lines.append("token lengths (with BOS/EOS)      p50     p90     p99     max")
        labels = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "pair": "prompt + longer completion"}
        for key in LENGTH_KEYS:
            stats = self.lengths.get(key, LengthStats())
            lines.append(f"  {labels[key]:<30} {stats.p50:>7} {stats.p90:>7} {stats.p99:>7} {stats.max:>7}")
        lines.append("")
        limits = self.limits
        lines.append(
            f"at max_length={limits.max_length}, max_prompt_length={limits.max_prompt_length}, "
            f"max_completion_length={limits.max_completion_length}, truncation_mode={limits.truncation_mode}:"
        )
        lines.append(f"  prompt truncated            {self.prompt_truncated:>7} rows")
        lines.append(f"  chosen truncated            {self.chosen_truncated:>7} rows")
        lines.append(f"  rejected truncated          {self.rejected_truncated:>7} rows")
        lines.append(
            f"  over a limit                {self.over_limit:>7} rows  (truncated with on_too_long=truncate, "
            "dropped with drop, an error with error)"
        )
        lines.append(f"  dropped: no room left       {self.no_room:>7} rows  (the prompt fills max_length)")
        lines.append("")
        lines.append(
            f"length bias: chosen longer than rejected in {pct(self.chosen_longer)} of rows "
            f"(rejected longer {pct(self.rejected_longer)}, same length {pct(self.same_length)})"
        )
        lines.append("")
        lines.append("questionable rows:")
        for label, count, option in (
            ("chosen == rejected", self.identical, "on_identical_pair"),
            ("empty chosen or rejected", self.empty, "on_empty_completion"),
            ("empty prompt", self.empty_prompts, "on_empty_prompt"),
            ("duplicate rows", self.duplicates, "on_duplicate"),
        ):
            lines.append(f"  {label:<26}{count:>7}  ({option}={self.policies.get(option, '?')} by default)")
        if self.warnings:
            lines.append("")
            lines.append("warnings:")
            lines.extend(f"  - {warning}" for warning in self.warnings)
        lines.append("")
        lines.append(self.example)
        return "\n".join(lines)


# ---- computing the report ------------------------------------------------------------------


def _list_lengths(dataset: Any, column: str) -> list[int]:
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.with_format("arrow")[column]).to_pylist()


def inspect_dataset(
    dataset: Any,
    tokenizer: Any,
    limits: Any,
    *,
    source: str = "data",
    split: str = "train",
    example_row: int = 0,
    num_proc: int | None = None,
) -> InspectReport:
    """The report for ``dataset`` (canonical columns, e.g. from :func:`load_preference_data`)."""
    from orpo.data.normalise import EMPTY_COLUMN, EMPTY_PROMPT_COLUMN, FORMAT_COLUMN, Normaliser, normalise_dataset
    from orpo.data.validate import check_dataset, column_values

    defaults = config_defaults()
    report = InspectReport(source=source, split=split, rows=len(dataset), limits=limits)
    options = ("on_identical_pair", "on_empty_completion", "on_duplicate", "on_empty_prompt")
    report.policies = {name: defaults[name] for name in options}

    check_dataset(dataset, split)
    normalised = normalise_dataset(dataset, Normaliser(tokenizer), split, num_proc)
    report.formats = Counter(column_values(normalised, FORMAT_COLUMN))
    _count_row_issues(report, normalised)
    texts = normalised.remove_columns([FORMAT_COLUMN, EMPTY_COLUMN, EMPTY_PROMPT_COLUMN])
    _measure_lengths(report, texts, tokenizer, num_proc)

    if not 0 <= example_row < len(texts):
        raise DataError(f"--example {example_row}: the {split} data has rows 0..{len(texts) - 1}")
    report.example, report.warnings = render_example(texts[example_row], tokenizer, limits, report.formats)
    report.warnings.extend(_signal_warnings(report))
    return report


def _count_row_issues(report: InspectReport, normalised: Any) -> None:
    """Identical, empty and duplicate pairs, empty prompts and prompt repeats, as training would count them."""
    from orpo.data.normalise import EMPTY_COLUMN, EMPTY_PROMPT_COLUMN
    from orpo.data.validate import column_values, find_row_issues

    prompts, chosens, rejecteds, empty, empty_prompts = (
        column_values(normalised, name) for name in ("prompt", "chosen", "rejected", EMPTY_COLUMN, EMPTY_PROMPT_COLUMN)
    )
    issues = find_row_issues(prompts, chosens, rejecteds, empty, empty_prompts=empty_prompts)
    report.identical, report.empty, report.duplicates = len(issues.identical), len(issues.empty), len(issues.duplicates)
    report.empty_prompts = len(issues.empty_prompts)
    report.distinct_prompts, report.max_prompt_repeats = issues.distinct_prompts, issues.max_prompt_repeats


def _measure_lengths(report: InspectReport, texts: Any, tokenizer: Any, num_proc: int | None) -> None:
    """Token lengths at full length (no truncation), then what ``report.limits`` would truncate or drop."""
    from orpo.data.prepare import tokenize_dataset
    from orpo.data.tokenize import LengthLimits, PairTokenizer

    limits = report.limits
    unlimited = LengthLimits(None, None, None, limits.truncation_mode)
    full, _ = tokenize_dataset(
        texts, PairTokenizer(tokenizer, unlimited), "truncate", num_proc, f"{report.split} (full length)"
    )
    prompt_len = _list_lengths(full, "prompt_input_ids")
    chosen_len = _list_lengths(full, "chosen_input_ids")
    rejected_len = _list_lengths(full, "rejected_input_ids")
    pair_len = [p + max(c, r) for p, c, r in zip(prompt_len, chosen_len, rejected_len, strict=True)]
    report.lengths = {
        "prompt": LengthStats.of(prompt_len),
        "chosen": LengthStats.of(chosen_len),
        "rejected": LengthStats.of(rejected_len),
        "pair": LengthStats.of(pair_len),
    }
    for p, c, r in zip(prompt_len, chosen_len, rejected_len, strict=True):
        _count_truncation(report, p, c, r)


def _count_truncation(report: InspectReport, prompt: int, chosen: int, rejected: int) -> None:
    """One pair's lengths: what the limits truncate, whether its completion has room, which side is longer."""
    from orpo.data.tokenize import (
        CHOSEN_TRUNCATED,
        NO_ROOM_FOR_COMPLETION,
        PROMPT_TRUNCATED,
        REJECTED_TRUNCATED,
        truncate_pair,
    )

    # range objects stand in for the ids: truncate_pair only slices and measures them.
    flags = truncate_pair(range(prompt), range(chosen), range(rejected), report.limits)[3]
    report.prompt_truncated += bool(flags & PROMPT_TRUNCATED)
    report.chosen_truncated += bool(flags & CHOSEN_TRUNCATED)
    report.rejected_truncated += bool(flags & REJECTED_TRUNCATED)
    if flags & NO_ROOM_FOR_COMPLETION:
        report.no_room += 1
    elif flags:
        report.over_limit += 1
    report.chosen_longer += chosen > rejected
    report.rejected_longer += rejected > chosen
    report.same_length += chosen == rejected


def _signal_warnings(report: InspectReport) -> list[str]:
    """Warnings about the preference signal: a length bias, pairs without a preference, empty prompts."""
    warnings: list[str] = []
    bias = report.length_bias
    if report.rows >= 10 and (bias >= 0.7 or report.rejected_longer / report.rows >= 0.7):
        longer = "chosen" if bias >= 0.7 else "rejected"
        warnings.append(
            f"{longer} is longer in most rows: ORPO may learn length rather than quality; consider balancing lengths"
        )
    if report.identical or report.empty:
        warnings.append("some rows carry no preference signal (identical or empty completions); see above")
    if report.empty_prompts:
        warnings.append(
            f"{report.empty_prompts} row(s) have an empty or whitespace-only prompt: they train as unconditional "
            "pairs; check the prompt column mapping (--prompt-text-column)"
        )
    return warnings
