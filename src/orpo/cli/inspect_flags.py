"""The flags of ``orpo data inspect``: ``orpo train``'s fields that say how data is read and tokenized.

Same spellings and defaults as ``orpo train`` (``--split``/``--dataset-train-split``, ``--model``, ``--max-length``...),
from the option table's light part, so ``--help`` and flag errors need neither torch nor the data code.
"""

from __future__ import annotations

import argparse
import sys

from orpo.cli.parser import ArgumentParser, add_options, flag_source
from orpo.config.options import light_table, merge

PROG = "orpo data inspect"

#: The ``orpo train`` fields that say how data is read and tokenized: same flags, same defaults.
FIELDS = (
    "dataset_train_split",
    "dataset_config",
    "prompt_text_column",
    "text_column",
    "rejected_text_column",
    "image_column",
    "model_name_or_path",
    "model_revision",
    "trust_remote_code",
    "chat_template",
    "resize_embeddings",
    "max_length",
    "max_prompt_length",
    "max_completion_length",
    "truncation_mode",
    "dataset_num_proc",
)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Summarise preference data as ORPO will see it: formats, token lengths, truncation, "
        "length bias, questionable rows, and one example tokenized with its label mask. The flags are "
        "orpo train's (--model counts tokens with that model's tokenizer).",
    )
    parser.add_argument("path", help="a file (.jsonl/.json/.csv/.tsv/.parquet), folder, glob, saved dataset or hub id")
    add_options(parser, parser, light_table().subset(FIELDS).options.values())
    parser.add_argument("--example", type=int, default=0, metavar="ROW", help="row to show tokenized (default: 0)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """argv -> a namespace with ``path``, ``example``, ``debug`` and every field of :data:`FIELDS`."""
    namespace, flags = flag_source(build_parser(), sys.argv[1:] if argv is None else argv)
    values = merge(flags)
    for name, option in light_table().subset(FIELDS).options.items():
        setattr(namespace, name, values.get(name, option.default))
    return namespace
