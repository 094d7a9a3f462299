"""``orpo data inspect PATH``: what the data look like to ORPO, before any training.

Prints the row count, the formats found, token length percentiles of prompt / chosen /
rejected, how many rows the length limits truncate or drop, the length bias (how often chosen
is longer than rejected), identical / empty / duplicate rows, and one example fully tokenized
with the prompt/completion boundary and the label mask, so that a double BOS, a missing EOS or
a wrong chat template is visible at a glance.  Bad data: one line on stderr, exit code 2.

Also runnable as ``python -m orpo.cli.inspect``.  The flags are ``orpo train``'s, from the option table
(:mod:`orpo.cli.inspect_flags`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

from orpo.cli.inspect_flags import parse_args
from orpo.cli.inspect_stats import PROG, InspectReport, inspect_dataset
from orpo.config.usage import UsageError
from orpo.data.errors import DataError


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    return []


def default_tokenizer(dataset: Any, rows: int = 2000) -> Any:
    """A byte-level BPE trained on (a sample of) the data, with a ChatML template."""
    from orpo.demo.tiny import build_tokenizer

    sample = dataset.select_columns([c for c in ("prompt", "chosen", "rejected") if c in dataset.column_names])
    sample = sample.select(range(min(rows, len(sample))))
    corpus = [text for row in sample for text in _strings(row)] or ["a"]
    return build_tokenizer(corpus, vocab_size=1000)


def run(args: argparse.Namespace) -> InspectReport:
    from orpo.data.load import ColumnMapping, load_preference_data
    from orpo.data.tokenize import LengthLimits

    mapping = ColumnMapping.from_autotrain(
        args.prompt_text_column, args.text_column, args.rejected_text_column, args.image_column
    )
    split = args.dataset_train_split
    splits = load_preference_data(args.path, split=split, subset=args.dataset_config, columns=mapping)
    dataset = splits["train"]
    split_name = split or "train"
    from orpo.models.sources import resolve_chat_template

    template = resolve_chat_template(args.chat_template)  # a name, file or Jinja text, as `orpo train` reads it
    if args.model_name_or_path:
        from orpo.models.loading import HubSource, load_tokenizer, named_load

        source = HubSource(bool(args.trust_remote_code), args.model_revision)
        loaded = named_load("the tokenizer of", args.model_name_or_path, load_tokenizer, template, source)
        tokenizer = getattr(loaded, "tokenizer", loaded)  # a vision model's processor: its text tokenizer
        name, note = args.model_name_or_path, ""
        if not args.resize_embeddings:
            _check_vocab(args.model_name_or_path, tokenizer, source)
    else:
        tokenizer = default_tokenizer(dataset)
        if template is not None:
            tokenizer.chat_template = template
        name = "a local byte-level BPE trained on this data (orpo.demo.tiny.build_tokenizer, ChatML template)"
        note = "no --model given: token counts are indicative only; pass --model to count with your model's tokenizer"
    limits = LengthLimits(args.max_length, args.max_prompt_length, args.max_completion_length, args.truncation_mode)
    report = inspect_dataset(
        dataset,
        tokenizer,
        limits,
        source=str(args.path),
        split=split_name,
        example_row=args.example,
        num_proc=args.dataset_num_proc,
    )
    report.tokenizer, report.tokenizer_note = name, note
    report.other_splits = {key: len(value) for key, value in splits.items() if key != "train"}
    return report


def _check_vocab(name: str, tokenizer: Any, source: Any) -> None:
    """Refuse a tokenizer with ids beyond the model's vocab_size, read from its config (no weights loaded):
    training would stop at its first step."""
    from orpo.models.checks import config_vocab_size, mismatch
    from orpo.models.loading import saved_config

    rows = config_vocab_size(saved_config(name, source))
    message = mismatch(name, tokenizer, rows, "the model config's vocab_size is {rows}") if rows else None
    if message is not None:
        raise UsageError(message)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``orpo data inspect``; returns the exit code (2 for bad data or flags)."""
    try:
        args = parse_args(argv)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0) if isinstance(exit_.code, int) else 0
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return print_report(args)


def print_report(args: argparse.Namespace) -> int:
    """Inspect and print, for parsed arguments (see :func:`orpo.cli.inspect_flags.parse_args`); the exit code."""
    try:
        with _quiet():
            report = run(args)
    except (DataError, ValueError, OSError) as err:
        if args.debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    print(report.render())
    return 0


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars or info logs on the report; restored afterwards (main may run in-process)."""
    import datasets

    bars, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    orpo_logger = logging.getLogger("orpo")
    level = orpo_logger.level
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    orpo_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        orpo_logger.setLevel(level)
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


if __name__ == "__main__":
    sys.exit(main())
