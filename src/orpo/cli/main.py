"""``orpo COMMAND``: dispatch, top-level help and version, one-line errors and exit codes.

Nothing heavy is imported here: a command's module is imported when the command runs, so ``orpo --help``,
``orpo --version`` and the help of every command but ``train`` answer without importing torch.
Errors are one line on stderr: exit status 2 for usage errors, 1 for failures; ``--debug`` (or
``ORPO_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import sys
from collections.abc import Callable

from orpo.config.resolve import one_line
from orpo.config.usage import UsageError

PROG = "orpo"
TRACEBACK_FLAG = "--debug"
DEBUG_OPTIONS = ("underflow_overflow", "tpu_metrics_debug")  # TrainingArguments.debug, which --debug OPTION sets
EXIT_USAGE = 2
EXIT_FAILURE = 1

#: command -> (module in orpo.cli, function, one-line description)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("train", "cmd_train", "fine-tune a model with ORPO (flags or --config recipe.yaml)"),
    "generate": ("tools", "cmd_generate", "generate with a trained model (full or LoRA adapter) on prompts"),
    "chat": ("tools", "cmd_chat", "chat with a trained model on the terminal"),
    "merge": ("tools", "cmd_merge", "merge a LoRA adapter into its base model"),
    "data": ("tools", "cmd_data", "inspect preference data: orpo data inspect PATH"),
    "plot": ("tools", "cmd_plot", "draw the training curves of a run"),
    "eval": ("eval", "main", "score preference accuracy and margins of a model on any preference set"),
    "config": ("recipes", "cmd_config", "shipped recipes and accelerate/DeepSpeed configs: list, path NAME"),
    "env": ("env", "cmd_env", "print versions of python, torch, transformers... for bug reports (--json)"),
    "demo": ("tools", "cmd_demo", "train a small model from scratch offline and show what ORPO did"),
}


def version() -> str:
    from .. import __version__

    return __version__


def _top_help() -> str:
    lines = [f"usage: {PROG} [--debug] COMMAND [options]", "", f"orpo {version()}: ORPO fine-tuning.", "", "commands:"]
    lines.extend(f"  {name:<10}{text}" for name, (_, _, text) in COMMANDS.items())
    lines += ["", f"Run `{PROG} COMMAND --help` for a command's options. --debug shows tracebacks on errors."]
    return "\n".join(lines)


def strip_debug(argv: list[str]) -> tuple[list[str], bool]:
    """Remove the traceback switch (a bare --debug), keeping TrainingArguments' --debug OPTION."""
    out, debug = [], os.environ.get("ORPO_DEBUG", "") not in ("", "0")
    for i, item in enumerate(argv):
        if item == TRACEBACK_FLAG and not (i + 1 < len(argv) and argv[i + 1].split()[0] in DEBUG_OPTIONS):
            debug = True
        else:
            out.append(item)
    return out, debug


def setup_logging(verbose: bool = False, libraries: bool = True) -> None:
    """orpo's messages as plain lines on stderr; quieter transformers/datasets (``libraries``: import them)."""

    class _Formatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                return f"{record.levelname.lower()}: {message}"
            return message

    root = logging.getLogger("orpo")
    if not any(getattr(h, "_orpo_cli", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter())
        handler._orpo_cli = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not libraries:
        return
    import datasets
    import transformers

    transformers.logging.set_verbosity_warning()
    if not sys.stderr.isatty():
        transformers.utils.logging.disable_progress_bar()
    if not verbose:
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()


def run_command(
    func: Callable[[list[str]], int], argv: list[str], prog: str, debug: bool, verbose: bool = False
) -> int:
    import warnings

    try:
        with warnings.catch_warnings():
            if not verbose:
                # Libraries' deprecation notices are for developers, not for someone running a command.
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
            return int(func(argv) or 0)
    except SystemExit as exit_:  # argparse --help
        return int(exit_.code or 0) if isinstance(exit_.code, int) else 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        status = EXIT_USAGE if isinstance(err, UsageError) else EXIT_FAILURE
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, debug = strip_debug(argv)
    verbose = False
    if "--verbose" in argv[:1]:
        verbose = True
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0 if argv else EXIT_USAGE
    if argv[0] in ("--version", "-V", "version"):
        print(f"orpo {version()}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"{PROG}: error: unknown command {command!r}{hint}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    module, function, _ = COMMANDS[command]
    func = getattr(importlib.import_module(f"{__package__}.{module}"), function)
    # A command's --help only prints: no need to import (and configure) transformers and datasets for it.
    setup_logging(verbose, libraries=not {"-h", "--help"} & set(argv[1:]))
    return run_command(func, argv[1:], f"{PROG} {command}", debug, verbose)
