"""``orpo data inspect PATH``: what the data look like to ORPO, before any training.

Prints the row count, the formats found, token length percentiles of prompt / chosen /
rejected, how many rows the length limits truncate or drop, the length bias (how often chosen
is longer than rejected), identical / empty / duplicate rows, and one example fully tokenized
with the prompt/completion boundary and the label mask, so that a double BOS, a missing EOS or
a wrong chat template is visible at a glance.  Bad data: one line on stderr, exit code 2.

Also runnable as ``python -m orpo.data.inspect``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

from .errors import DataError
from .report import PROG, InspectReport, config_defaults, inspect_dataset

# ---- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    defaults = config_defaults()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Summarise preference data as ORPO will see it: formats, token lengths, truncation, "
        "length bias, questionable rows, and one example tokenized with its label mask.",
    )
    parser.add_argument("path", help="a file (.jsonl/.json/.csv/.tsv/.parquet), folder, glob, saved dataset or hub id")
    parser.add_argument("--prompt-text-column", default=None, help="column holding the prompt (default: prompt)")
    parser.add_argument(
        "--text-column", default=None, help="column holding the chosen completion (default: chosen, else text)"
    )
    parser.add_argument(
        "--rejected-text-column", default=None, help="column holding the rejected completion (default: rejected)"
    )
    parser.add_argument("--image-column", default=None, help="column holding images (default: images / image)")
    parser.add_argument(
        "--split", default=None, help="split to inspect (default: train); slices like train[:1000] work"
    )
    parser.add_argument("--subset", default=None, help="the dataset's subset (config) name")
    parser.add_argument("--model", default=None, help="model id or path whose tokenizer counts the tokens")
    parser.add_argument("--chat-template", default=None, help="a Jinja chat template replacing the tokenizer's")
    parser.add_argument("--max-length", type=int, default=defaults["max_length"])
    parser.add_argument("--max-prompt-length", type=int, default=defaults["max_prompt_length"])
    parser.add_argument("--max-completion-length", type=int, default=defaults["max_completion_length"])
    parser.add_argument("--truncation-mode", choices=("keep_end", "keep_start"), default=defaults["truncation_mode"])
    parser.add_argument("--example", type=int, default=0, metavar="ROW", help="row to show tokenized (default: 0)")
    parser.add_argument("--num-proc", type=int, default=None, help="processes for normalising and tokenizing")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


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
    from ..testing import build_tokenizer

    sample = dataset.select_columns([c for c in ("prompt", "chosen", "rejected") if c in dataset.column_names])
    sample = sample.select(range(min(rows, len(sample))))
    corpus = [text for row in sample for text in _strings(row)] or ["a"]
    return build_tokenizer(corpus, vocab_size=1000)


def _load_tokenizer(model: str, chat_template: str | None) -> Any:
    from ..modeling import load_tokenizer

    try:
        tokenizer = load_tokenizer(model, chat_template)
    except OSError as err:
        raise DataError(f"--model {model}: could not load its tokenizer ({' '.join(str(err).split())[:300]})") from None
    return getattr(tokenizer, "tokenizer", tokenizer)


def run(args: argparse.Namespace) -> InspectReport:
    from .load import ColumnMapping, load_preference_data
    from .tokenize import LengthLimits

    mapping = ColumnMapping.from_autotrain(
        args.prompt_text_column, args.text_column, args.rejected_text_column, args.image_column
    )
    splits = load_preference_data(args.path, split=args.split, subset=args.subset, columns=mapping)
    dataset = splits["train"]
    split_name = args.split or "train"
    if args.model:
        tokenizer = _load_tokenizer(args.model, args.chat_template)
        name, note = args.model, ""
    else:
        tokenizer = default_tokenizer(dataset)
        if args.chat_template:
            tokenizer.chat_template = args.chat_template
        name = "a local byte-level BPE trained on this data (orpo.testing.build_tokenizer, ChatML template)"
        note = "no --model given: token counts are indicative only; pass --model to count with your model's tokenizer"
    for option in ("max_length", "max_prompt_length", "max_completion_length"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise DataError(f"--{option.replace('_', '-')} must be a positive integer, got {value}")
    limits = LengthLimits(args.max_length, args.max_prompt_length, args.max_completion_length, args.truncation_mode)
    report = inspect_dataset(
        dataset,
        tokenizer,
        limits,
        source=str(args.path),
        split=split_name,
        example_row=args.example,
        num_proc=args.num_proc,
    )
    report.tokenizer, report.tokenizer_note = name, note
    report.other_splits = {key: len(value) for key, value in splits.items() if key != "train"}
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``orpo data inspect``; returns the exit code (2 for bad data or flags)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse already printed its one-line usage error
        return int(exit_.code or 0)
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
