"""``orpo eval MODEL DATA``: the command line of :mod:`orpo.training.evaluation` (arguments, loading, tables).

The scoring itself lives in :mod:`orpo.training.evaluation`, which the demo uses too; this module only reads
the arguments, loads the models and data, and prints a table or one JSON document.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from orpo.config.arguments import DTYPES
from orpo.config.usage import UsageError
from orpo.training.evaluation import (
    compare,
    eval_config,
    evaluate,
    group_labels,
    prepare_pairs,
    sample_completions,
    score_pairs,
)

from .parser import ArgumentParser

PROG = "orpo eval"


def _positive(text: str) -> int:

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def build_parser() -> Any:
    parser = ArgumentParser(
        prog=PROG,
        description="Score how often a model prefers the chosen answer to the rejected one on a preference set "
        "(average log-prob per completion token, tokenized exactly as in training).",
    )
    parser.add_argument("model", help="Trained model directory (full model or LoRA adapter) or a hub id.")
    parser.add_argument(
        "data", help="Preference data: a .jsonl/.json/.csv/.parquet file, a folder, a glob or a hub id."
    )
    parser.add_argument("--compare", metavar="OTHER_MODEL", help="A second model, scored on the same pairs.")
    parser.add_argument("--split", help="Split to score (default: test, else validation, else train).")
    parser.add_argument("--subset", help="Subset (config name) of a hub dataset.")
    parser.add_argument("--prompt-text-column", help="Column holding the prompt (default: prompt).")
    parser.add_argument("--text-column", help="Column holding the chosen answer (default: chosen, else text).")
    parser.add_argument("--rejected-text-column", help="Column holding the rejected answer (default: rejected).")
    groups = parser.add_mutually_exclusive_group()
    groups.add_argument("--by", metavar="COLUMN", help="Also report each value of this column (e.g. kind, source).")
    groups.add_argument("--by-file", action="store_true", help="Also report each file of DATA (a folder or glob).")
    parser.add_argument("--max-pairs", type=_positive, help="Score only the first N pairs.")
    parser.add_argument("--max-length", type=_positive, help="As in training (default: ORPOConfig's, 1024).")
    parser.add_argument("--max-prompt-length", type=_positive, help="As in training (default: 512).")
    parser.add_argument("--max-completion-length", type=_positive, help="As in training (default: none).")
    parser.add_argument("--truncation-mode", choices=["keep_end", "keep_start"], help="As in training.")
    parser.add_argument("--batch-size", type=_positive, default=8, help="Pairs per forward pass (default: 8).")
    parser.add_argument(
        "--samples", type=_positive, default=0, help="Show each model's completion for the first N prompts."
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="For --samples; 0 = greedy (default: 1).")
    parser.add_argument("--max-new-tokens", type=_positive, default=64, help="For --samples (default: 64).")
    parser.add_argument("--seed", type=int, default=0, help="For --samples (default: 0).")
    parser.add_argument("--base", help="Base model of a LoRA adapter (default: the one in adapter_config.json).")
    parser.add_argument("--chat-template", help="Override the chat template (name, Jinja text or file).")
    parser.add_argument("--dtype", choices=DTYPES)
    parser.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda if available)")
    parser.add_argument("--json", action="store_true", help="Print one JSON document instead of tables.")
    return parser


def _load_rows(args: Any) -> tuple[Any, str]:
    """The split to score, and its name."""
    from ..data import ColumnMapping, load_preference_data
    from ..data.errors import SOURCE_COLUMN

    columns = ColumnMapping(args.prompt_text_column, args.text_column, args.rejected_text_column)
    loaded = load_preference_data(args.data, split=args.split, subset=args.subset, columns=columns)
    name = args.split or next(n for n in ("test", "validation", "train") if n in loaded)
    rows = loaded["train" if args.split else name]
    if args.max_pairs is not None and args.max_pairs < len(rows):
        rows = rows.select(range(args.max_pairs))
    if SOURCE_COLUMN not in rows.column_names:  # rows not read from files: name them by index, as training does
        rows = rows.add_column(SOURCE_COLUMN, [f"{name} row {index}" for index in range(len(rows))])
    return rows, name


def _shown_prompts(rows: Any) -> dict[str, str]:
    """Each row's prompt as a person wrote it (the last message of a conversation), by row location."""
    from ..data.errors import SOURCE_COLUMN

    if "prompt" not in rows.column_names:
        return {}
    shown = {}
    for location, prompt in zip(rows[SOURCE_COLUMN], rows["prompt"], strict=True):
        if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
            prompt = prompt[-1].get("content")
        if isinstance(prompt, str):
            shown[location] = prompt
    return shown


def _score_model(path: str, rows: Any, args: Any) -> dict[str, Any]:
    """Load one model, score (and sample) it; the model is freed on return."""
    from orpo.models.generation import load_for_inference
    from orpo.models.kinds import CAUSAL, kind_of

    model, tokenizer = load_for_inference(path, args.base, args.dtype, args.device, args.chat_template)
    if kind_of(model, tokenizer) is not CAUSAL:
        raise UsageError(f"{path}: orpo eval scores text-only causal language models")
    limits = ("max_length", "max_prompt_length", "max_completion_length", "truncation_mode")
    config = eval_config(**{k: getattr(args, k) for k in limits if getattr(args, k) is not None})
    pairs, report = prepare_pairs(rows, tokenizer, config)
    scores = score_pairs(model, pairs, tokenizer.pad_token_id, args.batch_size)
    groups = group_labels(pairs, args.by, args.by_file)
    result = {"model": path, "data_report": report.summary(), **evaluate(scores, groups), "_scores": scores}
    if args.samples:
        result["_samples"] = _samples(model, tokenizer, pairs, _shown_prompts(rows), args)
    return result


def _samples(model: Any, tokenizer: Any, pairs: Any, prompts: dict[str, str], args: Any) -> list[dict[str, Any]]:
    """The first ``--samples`` distinct prompts with their chosen, rejected and generated answers."""
    from ..data.errors import SOURCE_COLUMN

    shown = _first_prompts(pairs, args.samples)
    ids = [pairs[i]["prompt_input_ids"] for i in shown]
    outputs = sample_completions(model, tokenizer, ids, 1, args.temperature, args.max_new_tokens, args.seed)
    decode = lambda ids: " ".join(tokenizer.decode(ids, skip_special_tokens=True).split())  # noqa: E731
    return [
        {
            "row": pairs[i][SOURCE_COLUMN],
            "prompt": prompts.get(pairs[i][SOURCE_COLUMN]) or decode(pairs[i]["prompt_input_ids"]),
            "chosen": decode(pairs[i]["chosen_input_ids"]),
            "rejected": decode(pairs[i]["rejected_input_ids"]),
            "completion": out[0],
        }
        for i, out in zip(shown, outputs, strict=True)
    ]


def _first_prompts(pairs: Any, count: int) -> list[int]:
    """Indices of the first ``count`` pairs with distinct prompts."""
    seen: set[str] = set()
    out: list[int] = []
    for index, prompt in enumerate(pairs["prompt"]):
        if prompt not in seen:
            seen.add(prompt)
            out.append(index)
            if len(out) == count:
                break
    return out


def run(args: Any) -> dict[str, Any]:
    """Everything ``orpo eval`` prints, as one JSON-ready dict."""
    rows, split = _load_rows(args)
    results = [_score_model(path, rows, args) for path in [args.model, *([args.compare] if args.compare else [])]]
    out: dict[str, Any] = {
        "data": {"source": args.data, "split": split, "rows": len(rows)},
        "by": "file" if args.by_file else args.by,
        "models": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results],
    }
    if args.compare:
        out["compare"] = compare(results[0]["_scores"], results[1]["_scores"])
    if args.samples:
        out["samples"] = results[0]["_samples"]
        for sample in out["samples"]:
            sample["completions"] = {results[0]["model"]: sample.pop("completion")}
        if args.compare:
            other = {s["row"]: s["completion"] for s in results[1]["_samples"]}
            for sample in out["samples"]:
                sample["completions"][results[1]["model"]] = other.get(sample["row"])
    return out


def main(argv: list[str]) -> int:
    """``orpo eval MODEL DATA [--compare OTHER_MODEL] [--by COLUMN | --by-file] [--samples N] [--json]``."""
    args = build_parser().parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else format_report(result, args.temperature), flush=True)
    return 0


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def format_report(result: dict[str, Any], temperature: float = 1.0) -> str:
    """The tables ``orpo eval`` prints (``--json`` prints ``result`` itself)."""
    models = result["models"]
    names = [m["model"] for m in models]
    width = max(17, *(len(n) + 2 for n in names))  # a group cell: '100.0% (+0.123)'
    data = result["data"]
    lines = [f"{PROG}: {data['source']} [{data['split']}], {data['rows']} rows"]
    lines += [f"  {m['model']}: {m['data_report']}" for m in models]
    lines.append("")
    lines.append(f"{'':<24}" + "".join(f"{n:>{width}}" for n in names))
    for label, key, show in (
        ("pairs scored", "pairs", str),
        ("preference accuracy", "accuracy", _percent),
        ("chosen logp/token", "chosen_logp", _signed),
        ("rejected logp/token", "rejected_logp", _signed),
        ("margin (chosen - rej.)", "margin", _signed),
        ("log odds ratio", "log_odds", _signed),
    ):
        lines.append(f"{label:<24}" + "".join(f"{show(m[key]):>{width}}" for m in models))
    if result["by"]:
        lines.append(f"\nby {result['by']}: preference accuracy (margin)")
        for group in models[0]["groups"]:
            cells = []
            for m in models:
                g = m["groups"].get(group, {"pairs": 0, "accuracy": None, "margin": None})
                cells.append(f"{_percent(g['accuracy'])} ({_signed(g['margin'])})")
            label = f"  {group} ({models[0]['groups'][group]['pairs']})"
            lines.append(f"{label:<24}" + "".join(f"{c:>{width}}" for c in cells))
    if "compare" in result:
        c = result["compare"]
        lines.append(
            f"\npair by pair ({c['pairs']} pairs both scored): both prefer the chosen answer {c['both']}, "
            f"only {names[0]} {c['first_only']}, only {names[1]} {c['second_only']}, neither {c['neither']}"
        )
    if result.get("samples"):
        mode = "greedy" if temperature <= 0 else f"sampled at temperature {temperature:g}"
        lines.append(f"\ngenerations ({mode})")
        pad = max(len(n) for n in ["rejected", *names])
        for sample in result["samples"]:
            lines.append(f"  {'prompt':<{pad}}  {sample['prompt']!r}")
            lines.append(f"  {'chosen':<{pad}}  {sample['chosen']!r}")
            lines.append(f"  {'rejected':<{pad}}  {sample['rejected']!r}")
            lines += [f"  {name:<{pad}}  {text!r}" for name, text in sample["completions"].items()]
            lines.append("")
    return "\n".join(lines).rstrip()
