"""The ``orpo`` command line (and the ``aitraining``-compatible one).

``orpo train`` gets one flag per field of :class:`~orpo.ORPOConfig`,
:class:`~orpo.project.ModelArguments` and :class:`~orpo.project.DataArguments`, generated
from the dataclasses (``--learning-rate`` and ``--learning_rate`` both work), plus the
spellings AutoTrain and the alignment-handbook use (``--lr``, ``--project-name``,
``--dpo-beta``, ``--peft``, ``load_in_4bit: true``...).  ``--config recipe.yaml`` takes the
same names as YAML keys; flags given on the command line override the file.

Errors (bad flags, missing files, bad data) are one line on stderr and a non-zero exit status:
2 for usage errors, 1 for failures.  ``--debug`` (or ``ORPO_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .commands import cmd_chat, cmd_data, cmd_demo, cmd_generate, cmd_merge, cmd_plot
from .options import (
    TRACEBACK_FLAG,
    ArgumentParser,
    Option,
    _apply_special,
    _argparse_type,
    _finish_value,
    config_field_flags,
    option_table,
)
from .project import UsageError

__all__ = [
    "UsageError",
    "aitraining_main",
    "build_train_parser",
    "config_field_flags",
    "load_recipe",
    "main",
    "option_table",
    "parse_train_args",
    "resolve_train_args",
]

PROG = "orpo"
DEBUG_OPTIONS = ("underflow_overflow", "tpu_metrics_debug")
EXIT_USAGE = 2
EXIT_FAILURE = 1


def build_train_parser(prog: str = f"{PROG} train") -> ArgumentParser:
    table = option_table()
    parser = ArgumentParser(
        prog=prog,
        usage=f"{prog} [--config RECIPE.yaml] --model MODEL --data-path DATA [--output-dir DIR] [FLAGS]",
        description="Fine-tune a model with ORPO. Every ORPOConfig field is a flag (--name-with-dashes or "
        "--name_with_underscores); YAML recipes take the same names as keys.",
        epilog="Example: orpo train --model Qwen/Qwen2-0.5B-Instruct --data-path prefs.jsonl --output-dir runs/qwen "
        "--peft --beta 0.1 --learning-rate 8e-6",
    )
    parser.add_argument(
        "--config", metavar="YAML", help="Recipe file: keys are the flag names; flags given here override it."
    )
    parser.add_argument(
        "--print-config", action="store_true", help="Print the resolved settings as a YAML recipe and exit."
    )
    groups = {
        "model": parser.add_argument_group("model, LoRA and quantization"),
        "data": parser.add_argument_group("data"),
        "orpo": parser.add_argument_group("ORPO (ORPOConfig)"),
        "config": parser.add_argument_group(
            "training (ORPOConfig fields inherited from transformers.TrainingArguments)"
        ),
        "alias": parser.add_argument_group("AutoTrain / TRL / alignment-handbook spellings"),
    }
    from transformers import TrainingArguments

    hf_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    for option in table.options.values():
        if option.kind == "field":
            group = option.section if option.section != "config" else ("config" if option.name in hf_fields else "orpo")
        else:
            group = "alias"
        kwargs = dict(option.argparse_kwargs)
        kwargs["type"] = _argparse_type(option)
        groups[group].add_argument(
            *option.flags, dest=f"opt:{option.name}", default=argparse.SUPPRESS, help=option.help, **kwargs
        )
        if option.is_bool and option.kind == "field":
            groups[group].add_argument(
                f"--no-{option.name.replace('_', '-')}",
                dest=f"opt:{option.name}",
                action="store_const",
                const=False,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
    return parser


def _unknown_message(unknown: list[str], prog: str) -> str:
    table = option_table()
    flags = [item for item in unknown if item.startswith("-")]
    if flags:
        flag = flags[0].split("=", 1)[0]
        return f"unknown flag {flag}{table.suggest(flag)} (see {prog} --help)"
    return f"unexpected argument {unknown[0]!r} (see {prog} --help)"


def load_recipe(path: str) -> dict[str, Any]:
    """A YAML recipe -> {field: value} (aliases resolved, values converted)."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    table = option_table()
    resolved: dict[str, Any] = {}
    set_by: dict[str, str] = {}
    for key, value in data.items():
        option = table.lookup(str(key))
        if option is None:
            raise UsageError(f"{path}: unknown key {key!r}{table.suggest(str(key))}")
        if option.kind != "special":
            if option.target in set_by:
                raise UsageError(
                    f"{path}: keys {set_by[option.target]!r} and {key!r} both set {option.target}; keep one"
                )
            set_by[option.target] = str(key)
        try:
            converted = option.convert(value)
        except argparse.ArgumentTypeError as err:
            raise UsageError(f"{path}: key {key!r}: {err}") from None
        _store(option, converted, resolved)
    return resolved


def _store(option: Option, value: Any, out: dict[str, Any]) -> None:
    if option.kind == "special":
        _apply_special(option.name, value, out)
    else:
        out[option.target] = value


def parse_train_args(argv: list[str], prog: str = f"{PROG} train") -> tuple[dict[str, Any], argparse.Namespace]:
    """argv -> ({field: value} explicitly set by recipe and flags, namespace)."""
    parser = build_train_parser(prog)
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        raise UsageError(_unknown_message(unknown, prog))
    explicit: dict[str, Any] = {}
    if namespace.config:
        explicit.update(load_recipe(namespace.config))
    table = option_table()
    given = {key[4:]: value for key, value in vars(namespace).items() if key.startswith("opt:")}
    targets: dict[str, str] = {}
    for name in given:
        option = table.options[name]
        if option.kind != "special":
            if option.target in targets:
                raise UsageError(
                    f"{table.options[targets[option.target]].flags[0]} and {option.flags[0]} both set {option.target}; keep one"
                )
            targets[option.target] = name
    order = {"special": 0, "alias": 1, "field": 2}
    for name in sorted(given, key=lambda n: order[table.options[n].kind]):
        option = table.options[name]
        try:
            value = _finish_value(option, given[name])
        except argparse.ArgumentTypeError as err:
            raise UsageError(f"argument {option.flags[0]}: {err}") from None
        _store(option, value, explicit)
    return explicit, namespace


def resolve_train_args(explicit: dict[str, Any]) -> tuple[Any, Any, Any, bool]:
    """{field: value} -> (ModelArguments, DataArguments, ORPOConfig, auto logging steps?)."""
    from .config import ORPOConfig
    from .project import DataArguments, ModelArguments

    table = option_table()
    values = dict(explicit)
    username = values.pop("_username", None)
    debug = values.get("debug")
    if debug == TRACEBACK_FLAG:
        values.pop("debug")
    model_kwargs = {k: v for k, v in values.items() if k in table.model_fields}
    data_kwargs = {k: v for k, v in values.items() if k in table.data_fields}
    config_kwargs = {k: v for k, v in values.items() if k in table.config_fields}
    model_args = ModelArguments(**model_kwargs)
    data_args = DataArguments(**data_kwargs)
    if not model_args.model_name_or_path:
        raise UsageError("no model: pass --model (a hub id or a local directory)")
    if not data_args.dataset_name:
        raise UsageError("no training data: pass --data-path (a file, folder, glob or hub dataset id)")
    if model_args.mixed_precision in ("fp16", "bf16"):  # before ORPOConfig validates the device
        config_kwargs.setdefault(model_args.mixed_precision, True)
    if not config_kwargs.get("output_dir"):
        name = Path(str(model_args.model_name_or_path).rstrip("/")).name or "model"
        config_kwargs["output_dir"] = str(Path("runs") / f"{name}-orpo")
    if username and config_kwargs.get("push_to_hub") and not config_kwargs.get("hub_model_id"):
        config_kwargs["hub_model_id"] = f"{username}/{Path(config_kwargs['output_dir']).name}"
    warmup = config_kwargs.get("warmup_steps")
    if "warmup_steps" in config_kwargs and warmup is not None and warmup < 0:
        raise UsageError(f"warmup must be >= 0, got {warmup}")
    try:
        config = ORPOConfig(**config_kwargs)
    except (ValueError, TypeError) as err:
        raise UsageError(_one_line(err)) from None
    auto_logging = "logging_steps" not in config_kwargs
    return model_args, data_args, config, auto_logging


def _recipe_text(explicit: dict[str, Any]) -> str:
    import yaml

    clean = {
        k: v for k, v in sorted(explicit.items()) if not k.startswith("_") and k != "hub_token" and v != TRACEBACK_FLAG
    }
    return yaml.safe_dump(clean, sort_keys=False, default_flow_style=False)


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


def cmd_train(argv: list[str]) -> int:
    from .project import run_training

    explicit, namespace = parse_train_args(argv)
    model_args, data_args, config, auto_logging = resolve_train_args(explicit)
    if namespace.print_config:
        explicit.setdefault("output_dir", config.output_dir)
        print(_recipe_text(explicit), end="")
        return 0
    peft = f"LoRA r={model_args.lora_r} alpha={model_args.lora_alpha}" if model_args.use_peft else "full fine-tuning"
    print(
        f"orpo train: model {model_args.model_name_or_path} | data {data_args.dataset_name} | {peft} | "
        f"beta {config.beta:g} | lr {config.learning_rate:g} | output {config.output_dir}",
        flush=True,
    )
    result = run_training(model_args, data_args, config, auto_logging=auto_logging)
    explicit.setdefault("output_dir", config.output_dir)
    (Path(result.output_dir) / "orpo_recipe.yaml").write_text(_recipe_text(explicit), encoding="utf-8")
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train": (cmd_train, "fine-tune a model with ORPO (flags or --config recipe.yaml)"),
    "generate": (cmd_generate, "generate with a trained model (full or LoRA adapter) on prompts"),
    "chat": (cmd_chat, "chat with a trained model on the terminal"),
    "merge": (cmd_merge, "merge a LoRA adapter into its base model"),
    "data": (cmd_data, "inspect preference data: orpo data inspect PATH"),
    "plot": (cmd_plot, "draw the training curves of a run"),
    "demo": (cmd_demo, "train a small model from scratch offline and show what ORPO did"),
}


def _top_help() -> str:
    from . import __version__

    lines = [
        f"usage: {PROG} [--debug] COMMAND [options]",
        "",
        f"orpo {__version__}: ORPO fine-tuning.",
        "",
        "commands:",
    ]
    lines.extend(f"  {name:<10}{text}" for name, (_, text) in COMMANDS.items())
    lines += ["", f"Run `{PROG} COMMAND --help` for a command's options. --debug shows tracebacks on errors."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, KeyError):
        text = f"missing key {text}"
    return text or type(err).__name__


def _strip_debug(argv: list[str]) -> tuple[list[str], bool]:
    """Remove the traceback switch (a bare --debug), keeping TrainingArguments' --debug OPTION."""
    out, debug = [], os.environ.get("ORPO_DEBUG", "") not in ("", "0")
    i = 0
    while i < len(argv):
        item = argv[i]
        if item == TRACEBACK_FLAG and not (i + 1 < len(argv) and argv[i + 1].split()[0] in DEBUG_OPTIONS):
            debug = True
        else:
            out.append(item)
        i += 1
    return out, debug


def setup_logging(verbose: bool = False) -> None:
    """orpo's messages as plain lines on stderr; quieter transformers/datasets."""

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
    try:
        import datasets
        import transformers

        transformers.logging.set_verbosity_warning()
        if not sys.stderr.isatty():
            transformers.utils.logging.disable_progress_bar()
        if not verbose:
            datasets.disable_progress_bars()
            datasets.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


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
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, debug = _strip_debug(argv)
    verbose = False
    if "--verbose" in argv[:1]:
        verbose = True
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0 if argv else EXIT_USAGE
    if argv[0] in ("--version", "-V", "version"):
        from . import __version__

        print(f"orpo {__version__}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"{PROG}: error: unknown command {command!r}{hint}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(verbose)
    return run_command(COMMANDS[command][0], argv[1:], f"{PROG} {command}", debug, verbose)


def aitraining_main(argv: list[str] | None = None) -> int:
    """``aitraining llm --train --model M --data-path D --project-name P --trainer orpo ...``"""
    from .autotrain import aitraining_main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
