"""``orpo train``: one flag per field of the option table, a YAML recipe under them.

Every field of ``ModelArguments``, ``DataArguments`` and ``ORPOConfig`` is a flag (``--learning-rate`` and
``--learning_rate``) and a recipe key, plus the aliases and switches AutoTrain and the alignment-handbook use
(``--lr``, ``--project-name``, ``--peft``, ``load_in_4bit: true``...).  Flags override the recipe; within one of
them a field set twice (``--lr`` and ``--learning-rate``, or ``--beta`` repeated) is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from orpo.config.options import GROUPS, Source, option_table
from orpo.config.resolve import ResolvedArgs, recipe_source, resolve, resolve_values
from orpo.config.shipped import recipe_file, recipe_names
from orpo.models.adapters import start_adapter_base

from .parser import ArgumentParser, add_options, flag_source

PROG = "orpo train"
LIST = "list"  # --config list: the shipped recipes' names


def build_train_parser(prog: str = PROG) -> ArgumentParser:
    parser = ArgumentParser(
        prog=prog,
        usage=f"{prog} [--config RECIPE.yaml] --model MODEL --data-path DATA [--output-dir DIR] [FLAGS]",
        description="Fine-tune a model with ORPO. Every ORPOConfig field is a flag (--name-with-dashes or "
        "--name_with_underscores); YAML recipes take the same names as keys. Booleans take --flag, --flag false "
        "or --no-flag.",
        epilog="Example: orpo train --model Qwen/Qwen2-0.5B-Instruct --data-path prefs.jsonl --output-dir runs/qwen "
        "--peft --beta 0.1 --learning-rate 8e-6",
    )
    parser.add_argument(
        "--config",
        metavar="YAML",
        help="Recipe file, or a shipped recipe's name (--config list names them): keys are the flag names; "
        "flags given here override it.",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="Print the resolved settings as a YAML recipe and exit."
    )
    options = list(option_table().options.values())
    for group, title in GROUPS.items():
        add_options(parser, parser.add_argument_group(title), [o for o in options if o.group == group])
    return parser


def _listing(namespace: argparse.Namespace) -> bool:
    return bool(namespace.config == LIST and not Path(LIST).is_file())


def train_sources(argv: list[str], prog: str = PROG) -> tuple[list[Source], argparse.Namespace]:
    """argv -> ([the recipe, if any, then the flags], the namespace of --config / --print-config)."""
    namespace, flags = flag_source(build_train_parser(prog), argv)
    sources = [recipe_source(recipe_file(namespace.config))] if namespace.config and not _listing(namespace) else []
    return [*sources, flags], namespace


def recipe_text(values: dict[str, Any]) -> str:
    """Settings as a YAML recipe (without the hub token)."""
    import yaml

    clean = {
        name: dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value
        for name, value in sorted(values.items())
        if name != "hub_token"
    }
    return yaml.safe_dump(clean, sort_keys=False, default_flow_style=False)


def _announce(resolved: ResolvedArgs) -> None:
    model, data, config = resolved.model, resolved.data, resolved.config
    peft = f"LoRA r={model.lora_r} alpha={model.lora_alpha}" if model.use_peft else "full fine-tuning"
    if start_adapter_base(model) is not None and not model.merge_start_adapter:
        peft = f"LoRA adapter continued on {start_adapter_base(model)}"
    print(
        f"orpo train: model {model.model_name_or_path} | data {data.dataset_name} | {peft} | "
        f"beta {config.beta:g} | lr {config.learning_rate:g} | output {config.output_dir}",
        flush=True,
    )


def resume_command(argv: list[str], prog: str = PROG) -> str:
    """This command line with ``--resume-from-checkpoint latest`` (replacing any resume flag given)."""
    import shlex

    kept: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in ("--resume-from-checkpoint", "--resume_from_checkpoint"):
            skip = "=" not in item
            continue
        kept.append(item)
    return shlex.join([*prog.split(), *kept, "--resume-from-checkpoint", "latest"])


def cmd_train(argv: list[str]) -> int:
    sources, namespace = train_sources(argv)
    if _listing(namespace):
        print("\n".join(recipe_names()))
        return 0
    if namespace.print_config:  # without the hardware checks: the recipe may be for another machine
        values, _ = resolve_values(*sources)
        print(recipe_text(values), end="")
        return 0
    resolved = resolve(*sources)
    from orpo.training.distributed import is_launch_main
    from orpo.training.run import run_training

    if is_launch_main():
        _announce(resolved)
    result = run_training(
        resolved.model,
        resolved.data,
        resolved.config,
        auto_logging=resolved.auto_logging,
        resume_command=resume_command(argv),
    )
    if is_launch_main():
        (Path(result.output_dir) / "orpo_recipe.yaml").write_text(recipe_text(resolved.values), encoding="utf-8")
    return 0
