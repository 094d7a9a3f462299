"""``orpo generate|chat|merge|demo|plot|data``: everything but ``orpo train``.

Each command parses its flags before importing anything heavy, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from orpo.config.arguments import DTYPES
from orpo.config.usage import UsageError

from .parser import ArgumentParser

PROG = "orpo"
EXIT_USAGE = 2


def _read_prompts(args: argparse.Namespace) -> list[str | list[dict[str, Any]]]:
    prompts: list[str | list[dict[str, Any]]] = [*(args.prompts or []), *(args.prompt or [])]
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file not found: {args.prompts_file}")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            if path.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {number}: invalid JSON ({err.msg})") from None
                prompt = row.get("prompt") if isinstance(row, dict) else None
                if prompt is None:
                    raise ValueError(f"{path}, line {number}: no 'prompt' field")
                prompts.append(prompt)
            else:
                prompts.append(line)
    if not prompts and not sys.stdin.isatty():
        prompts = [line.strip() for line in sys.stdin if line.strip()]
    if not prompts:
        raise UsageError("no prompt: pass prompts as arguments, --prompt, --prompts-file, or on stdin")
    return prompts


def confirm_overwrite(path: str, overwrite: bool, prog: str) -> None:
    """Writing into a folder that already holds files: ask on a terminal; elsewhere refuse unless ``overwrite``."""
    target = Path(path)
    if overwrite or not target.exists():
        return
    if not target.is_dir():
        raise UsageError(f"{path} is a file, not a folder: choose another output")
    entries = sum(1 for _ in target.iterdir())
    if entries == 0:
        return
    if sys.stdin.isatty():
        answer = input(f"{prog}: {path} is not empty ({entries} entries); overwrite files in it? [y/N] ")
        if answer.strip().lower() in ("y", "yes"):
            return
        raise UsageError(f"{path} left as it was (answer y to overwrite, or pass --overwrite)")
    raise UsageError(f"{path} is not empty ({entries} entries): pass --overwrite to write into it, or choose another")


def _add_inference_args(parser: argparse.ArgumentParser, temperature: float, max_new_tokens: int) -> None:
    parser.add_argument("model", help="Trained model directory (full model or LoRA adapter) or a hub id.")
    parser.add_argument("--base", help="Base model of a LoRA adapter (default: the one in adapter_config.json).")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=temperature, help="0 = greedy.")
    parser.add_argument("--top-p", type=float, default=0.9 if temperature > 0 else 1.0)
    parser.add_argument("--system", help="System prompt (with a chat template).")
    parser.add_argument("--chat-template", help="Override the chat template (name, Jinja text or file).")
    parser.add_argument("--dtype", choices=DTYPES, help="Dtype to load the weights in (default: the model's own).")
    parser.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    _add_source_args(parser)


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--revision", help="Branch, tag or commit of a hub model (of the base, for an adapter).")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="Allow a model whose code lives in its repository."
    )


def _source(args: argparse.Namespace) -> Any:
    from orpo.models.loading import HubSource

    return HubSource(args.trust_remote_code, args.revision)


def cmd_generate(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog=f"{PROG} generate", description="Generate with a trained model on prompts, using its chat template."
    )
    _add_inference_args(parser, temperature=0.0, max_new_tokens=128)
    parser.add_argument("prompts", nargs="*", help="Prompts (or use --prompt / --prompts-file / stdin).")
    parser.add_argument("--prompt", action="append", help="A prompt (repeatable).")
    parser.add_argument("--prompts-file", help="A text file (one prompt per line) or .jsonl with a 'prompt' field.")
    parser.add_argument("--no-chat-template", action="store_true", help="Feed prompts as raw text.")
    parser.add_argument("--json", action="store_true", help="Print JSON lines {prompt, completion}.")
    args = parser.parse_args(argv)
    prompts = _read_prompts(args)
    from orpo.models.generation import generate, load_for_inference

    model, tokenizer = load_for_inference(
        args.model, args.base, args.dtype, args.device, args.chat_template, _source(args)
    )
    shown: list[Any] = []

    def header(prompt: Any) -> None:  # the text output streams each completion under its prompt
        print(f"{chr(10) if shown else ''}### {prompt}", flush=True)
        shown.append(prompt)

    completions = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        system=args.system,
        use_chat_template=not args.no_chat_template,
        seed=args.seed,
        stream=None if args.json else sys.stdout,
        before_each=header,
    )
    if args.json:
        for prompt, completion in zip(prompts, completions, strict=True):
            print(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False))
    else:
        print()
    return 0


def cmd_chat(argv: list[str]) -> int:
    parser = ArgumentParser(prog=f"{PROG} chat", description="Chat with a trained model on the terminal.")
    _add_inference_args(parser, temperature=0.7, max_new_tokens=256)
    args = parser.parse_args(argv)
    from orpo.models.generation import chat, load_for_inference

    model, tokenizer = load_for_inference(
        args.model, args.base, args.dtype, args.device, args.chat_template, _source(args)
    )
    import torch

    torch.manual_seed(args.seed)
    return chat(model, tokenizer, args.system, args.max_new_tokens, args.temperature, args.top_p)


def cmd_merge(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog=f"{PROG} merge", description="Merge a LoRA adapter into its base model and save the full model."
    )
    parser.add_argument("adapter", help="Directory of the trained LoRA adapter (adapter_config.json).")
    parser.add_argument("output", nargs="?", help="Directory to write the merged model to.")
    parser.add_argument("--output", "-o", dest="output_flag", help="Same as the positional OUTPUT.")
    parser.add_argument("--base", help="Base model (default: the one in adapter_config.json).")
    parser.add_argument("--dtype", choices=DTYPES, help="Dtype to merge and save in.")
    parser.add_argument("--overwrite", action="store_true", help="Write into OUTPUT even if it holds files.")
    _add_source_args(parser)
    args = parser.parse_args(argv)
    output = args.output_flag or args.output
    if not output:
        raise UsageError("pass the output directory: orpo merge ADAPTER OUTPUT")
    confirm_overwrite(output, args.overwrite, f"{PROG} merge")
    from orpo.models.generation import merge_adapter

    path = merge_adapter(args.adapter, output, base=args.base, dtype=args.dtype, source=_source(args))
    print(f"merged model written to {path}")
    return 0


def cmd_demo(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog=f"{PROG} demo",
        description="Offline, about a minute: teach a tiny model a habit, then align it with SFT and with ORPO and compare.",
    )
    parser.add_argument(
        "--fast", action="store_true", help="A few seconds' version (for tests); also ORPO_DEMO_FAST=1."
    )
    parser.add_argument(
        "--output-dir", default="orpo-demo", help="Where the model, curves and summary go (default: orpo-demo)."
    )
    parser.add_argument("--steps", type=int, help="Alignment steps of each run (default: 300, or 16 with --fast).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="Write into the output dir even if it holds files.")
    args = parser.parse_args(argv)
    confirm_overwrite(args.output_dir, args.overwrite, f"{PROG} demo")
    fast = args.fast or os.environ.get("ORPO_DEMO_FAST", "") not in ("", "0")
    from ..demo import run_demo

    run_demo(output_dir=args.output_dir, fast=fast, steps=args.steps, seed=args.seed)
    return 0


def cmd_plot(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog=f"{PROG} plot", description="Draw the training curves of a run (its trainer_state.json)."
    )
    parser.add_argument("run", help="Output directory of a run, a checkpoint directory, or a trainer_state.json.")
    parser.add_argument("--output", "-o", help="PNG to write (default: RUN/training_curves.png).")
    args = parser.parse_args(argv)
    run = Path(args.run)
    state = run if run.is_file() else run / "trainer_state.json"
    if not state.is_file() and run.is_dir():
        checkpoints = sorted(
            run.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1])
        )
        state = checkpoints[-1] if checkpoints else state
    if not state.is_file():
        raise FileNotFoundError(f"no trainer_state.json in {args.run}")
    history = json.loads(state.read_text(encoding="utf-8")).get("log_history", [])
    out = args.output or str((run if run.is_dir() else run.parent) / "training_curves.png")
    from orpo.training.summary import plot_training_curves

    path = plot_training_curves(history, out)
    if path is None:
        raise ValueError(f"{state} has no logged steps to plot")
    print(f"curves written to {path}")
    return 0


def cmd_data(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {PROG} data inspect PATH [options]   (see {PROG} data inspect --help)")
        return 0 if argv else EXIT_USAGE
    if argv[0] != "inspect":
        raise UsageError(f"unknown command {argv[0]!r}; available: inspect")
    from orpo.cli.inspect_flags import parse_args

    args = parse_args(argv[1:])
    from orpo.cli.inspect import print_report

    return print_report(args)
