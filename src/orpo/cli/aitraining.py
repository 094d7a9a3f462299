"""``aitraining llm --train --trainer orpo ...``: AutoTrain's command line, one flag per ``LLMTrainingParams`` field.

The flags build an :class:`~orpo.LLMTrainingParams` (so they mean exactly what its fields mean) and train it
with :class:`~orpo.AutoTrainProject`; their help comes from the option table field each one sets.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING

from orpo.cli.main import run_command, setup_logging, strip_debug, version
from orpo.cli.parser import ArgumentParser, add_options, flag_source
from orpo.config.options import Option, field_options, merge, option_table
from orpo.config.usage import UsageError

if TYPE_CHECKING:
    from orpo.training.autotrain import LLMTrainingParams

PROG = "aitraining llm"
EXIT_USAGE = 2


def autotrain_options() -> list[Option]:
    """``LLMTrainingParams``' fields as options (AutoTrain's types and defaults; a text field takes the
    choices of the field it sets, so ``--quantization int3`` is refused naming the flag)."""
    from orpo.training.autotrain import LLMTrainingParams

    table = option_table()
    options = []
    for option in field_options(LLMTrainingParams, "autotrain"):
        target = table.lookup(option.name)
        if target is not None and option.kind.metavar == "TEXT" and target.kind.choices:
            option = dataclasses.replace(option, kind=target.kind)
        options.append(option)
    return options


def build_aitraining_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG, description="AutoTrain-compatible LLM command (ORPO only): aitraining llm --train --trainer orpo ..."
    )
    parser.add_argument("--train", action="store_true", help="Train (the only action supported).")
    for action in ("deploy", "inference", "interactive"):
        parser.add_argument(f"--{action}", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="local", help="Only 'local' (train in this process).")
    table = option_table()
    options = autotrain_options()
    helps: dict[str, str] = {}
    for option in options:
        target = table.lookup(option.name)
        helps[option.name] = target.help if target is not None else ""
    add_options(parser, parser, options, helps)
    return parser


def aitraining_main(argv: list[str] | None = None) -> int:
    """``aitraining llm --train --model M --data-path D --project-name P --trainer orpo ...``"""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, debug = strip_debug(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(
            f"usage: {PROG} --train --trainer orpo --model MODEL --data-path DATA --project-name NAME [options]\n\n"
            "AutoTrain-compatible command provided by orpo: only `llm` with --trainer orpo.\n"
            f"Run `{PROG} --help` for the options."
        )
        return 0 if argv else EXIT_USAGE
    if argv[0] in ("--version", "-V"):
        print(f"aitraining (orpo {version()})")
        return 0
    if argv[0] != "llm":
        print(
            f"aitraining: error: command {argv[0]!r} is not provided by orpo; only `aitraining llm --trainer orpo` is",
            file=sys.stderr,
        )
        return EXIT_USAGE
    setup_logging(libraries=not {"-h", "--help"} & set(argv[1:]))
    return run_command(_aitraining_llm, argv[1:], PROG, debug)


def parse_aitraining(argv: list[str]) -> tuple[LLMTrainingParams, argparse.Namespace]:
    """``aitraining llm`` flags -> (the LLMTrainingParams they spell, the namespace of --train / --backend)."""
    from orpo.training.autotrain import LLMTrainingParams

    namespace, flags = flag_source(build_aitraining_parser(), argv)
    for action in ("deploy", "inference", "interactive"):
        if getattr(namespace, action):
            raise UsageError(f"--{action} is not supported by orpo; use --train (and `orpo generate` / `orpo chat`)")
    if not namespace.train:
        raise UsageError("nothing to do: pass --train")
    return LLMTrainingParams(**merge(flags)), namespace


def _aitraining_llm(argv: list[str]) -> int:
    from orpo.training.autotrain import AutoTrainProject

    params, namespace = parse_aitraining(argv)
    project = AutoTrainProject(params=params, backend=namespace.backend)
    print(
        f"{PROG} (orpo): model {params.model} | data {params.data_path} | trainer orpo | "
        f"peft {params.peft} | project {params.project_name}",
        flush=True,
    )
    project.create()
    return 0
