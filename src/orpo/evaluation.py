"""``orpo eval``: how well a model prefers the chosen answers of a preference set to the rejected ones.

Eval scores exactly what training scores: rows go through the training data path
(:func:`orpo.data.load_preference_data`, then :func:`orpo.data.prepare_preference_dataset` with an
:class:`orpo.ORPOConfig`'s length limits and row policies, so the same chat template, BOS/EOS and
truncation), batches are padded by the training collator, and each completion's average log-prob
per token comes from :func:`orpo.loss.sequence_logps`.  A pair is won when the chosen completion's
average log-prob is above the rejected one's (``rewards/accuracies`` during training).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

PROG = "orpo eval"
#: Summary of a set of pairs: what ``summarize`` returns and ``--json`` prints per model and group.
METRICS = ("pairs", "accuracy", "ties", "chosen_logp", "rejected_logp", "margin", "log_odds")
_FILE_OF = re.compile(r"^(.*?), (?:line|record) \d+")


@dataclass(frozen=True)
class PairScores:
    """Average log-prob per completion token of each pair's chosen and rejected answer."""

    chosen: Any  # float32 tensor [pairs]
    rejected: Any  # float32 tensor [pairs]
    rows: list[str]  # each pair's source row ("data.jsonl, line 3 (row 2)"), to line up two models

    @property
    def wins(self) -> Any:
        return self.chosen > self.rejected


def eval_config(**limits: Any) -> Any:
    """The ORPOConfig whose data settings eval uses: training's defaults unless given (max_length...)."""
    from . import ORPOConfig

    return ORPOConfig(output_dir="orpo-eval", report_to="none", **limits)


def prepare_pairs(data: Any, tokenizer: Any, config: Any = None, split: str = "eval") -> tuple[Any, Any]:
    """Preference rows (a datasets.Dataset or list of dicts) -> (tokenized pairs, DataReport), as training does."""
    from .data import prepare_preference_dataset

    return prepare_preference_dataset(data, tokenizer, config if config is not None else eval_config(), split)


def score_pairs(model: Any, pairs: Any, pad_token_id: int, batch_size: int = 8) -> PairScores:
    """One forward pass per batch of ``batch_size`` pairs over tokenized ``pairs`` (from :func:`prepare_pairs`)."""
    import torch

    from .data import ORPODataCollator
    from .data.errors import SOURCE_COLUMN
    from .loss import sequence_logps

    collator = ORPODataCollator(pad_token_id=pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        with torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                features = [pairs[i] for i in range(start, min(start + batch_size, len(pairs)))]
                batch = collator(features)
                logits = model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    use_cache=False,
                ).logits
                logps = sequence_logps(logits, batch["labels"].to(device))
                assert bool(logps.valid.all()), "tokenization keeps at least EOS in every completion"
                chosen.append(logps.mean[: len(features)].float().cpu())
                rejected.append(logps.mean[len(features) :].float().cpu())
    finally:
        model.train(was_training)
    rows = list(pairs[SOURCE_COLUMN]) if SOURCE_COLUMN in pairs.column_names else [str(i) for i in range(len(pairs))]
    return PairScores(torch.cat(chosen), torch.cat(rejected), rows)


def summarize(scores: PairScores, select: Any = None) -> dict[str, Any]:
    """The ``METRICS`` of the pairs ``select`` picks (a bool mask; default all), averaged over pairs."""
    from .loss import odds_ratio_loss

    chosen, rejected = scores.chosen.double(), scores.rejected.double()
    if select is not None:
        chosen, rejected = chosen[select], rejected[select]
    n = int(chosen.numel())
    if n == 0:
        return {"pairs": 0, **{name: None for name in METRICS[1:]}}
    log_odds = odds_ratio_loss(chosen, rejected, beta=1.0).log_odds
    return {
        "pairs": n,
        "accuracy": float((chosen > rejected).double().mean()),
        "ties": int((chosen == rejected).sum()),
        "chosen_logp": float(chosen.mean()),
        "rejected_logp": float(rejected.mean()),
        "margin": float((chosen - rejected).mean()),
        "log_odds": float(log_odds.mean()),
    }


def group_labels(pairs: Any, by: str | None = None, by_file: bool = False) -> list[str] | None:
    """Each pair's group: the value of column ``by``, or (``by_file``) the file its row came from."""
    from .data import DataError
    from .data.errors import SOURCE_COLUMN

    if by_file:
        labels = []
        for location in pairs[SOURCE_COLUMN] if SOURCE_COLUMN in pairs.column_names else []:
            match = _FILE_OF.match(location or "")
            if match is None:
                raise DataError(f"--by-file: row {location!r} was not read from a file (give DATA as files)")
            labels.append(match.group(1))
        return labels
    if by is None:
        return None
    hidden = {"prompt", "chosen", "rejected", "length", "prompt_input_ids", "chosen_input_ids", "rejected_input_ids"}
    available = [c for c in pairs.column_names if c not in hidden and not c.startswith("_orpo_")]
    if by not in available:
        raise DataError(
            f"--by {by}: no such column in the data; columns to group by: {', '.join(available) or '(none)'}"
        )
    return ["(none)" if value is None else str(value) for value in pairs[by]]


def evaluate(scores: PairScores, groups: list[str] | None = None) -> dict[str, Any]:
    """Summary of all pairs, and of each group (sorted by name) when ``groups`` labels the pairs."""
    import torch

    result = summarize(scores)
    if groups is not None:
        labels = sorted(set(groups))
        result["groups"] = {
            label: summarize(scores, torch.tensor([g == label for g in groups], dtype=torch.bool)) for label in labels
        }
    return result


def compare(first: PairScores, second: PairScores) -> dict[str, int]:
    """Pair by pair, on the rows both models scored: which model prefers the chosen answer."""
    won = dict(zip(second.rows, second.wins.tolist(), strict=True))
    counts = {"pairs": 0, "both": 0, "first_only": 0, "second_only": 0, "neither": 0}
    for row, first_won in zip(first.rows, first.wins.tolist(), strict=True):
        if row not in won:
            continue
        second_won = won[row]
        counts["pairs"] += 1
        key = (
            "both"
            if first_won and second_won
            else "first_only"
            if first_won
            else "second_only"
            if second_won
            else "neither"
        )
        counts[key] += 1
    return counts


def sample_completions(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    num_samples: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 256,
) -> list[list[str]]:
    """``num_samples`` completions of each tokenized prompt (greedy at temperature 0), cut at the first
    stop token; prompts are left-padded into batches of ``batch_size`` sequences."""
    import torch

    from .generation import stop_token_ids

    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    rows = [ids for ids in prompt_ids for _ in range(num_samples)]
    sample = temperature > 0
    options: dict[str, Any] = {"do_sample": sample}
    if sample:
        options.update(temperature=temperature, top_k=0, top_p=1.0)
    texts: list[str] = []
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(ids) for ids in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, ids in enumerate(chunk):
                input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[i, width - len(ids) :] = 1
            with torch.no_grad():
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    max_new_tokens=max_new_tokens,
                    eos_token_id=stops or None,
                    pad_token_id=pad,
                    **options,
                )
            for new in out[:, width:].tolist():
                cut = next((j for j, token in enumerate(new) if token in stops), len(new))
                texts.append(tokenizer.decode(new[:cut], skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return [texts[i : i + num_samples] for i in range(0, len(texts), num_samples)]


# ---- the command line -------------------------------------------------------------------------------


def _positive(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def build_parser() -> Any:
    from .options import ArgumentParser

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
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda if available)")
    parser.add_argument("--json", action="store_true", help="Print one JSON document instead of tables.")
    return parser


def _load_rows(args: Any) -> tuple[Any, str]:
    """The split to score, and its name."""
    from .data import ColumnMapping, load_preference_data
    from .data.errors import SOURCE_COLUMN

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
    from .data.errors import SOURCE_COLUMN

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
    from .generation import load_for_inference
    from .loading import UsageError

    model, tokenizer = load_for_inference(path, args.base, args.dtype, args.device, args.chat_template)
    if getattr(model.config, "is_encoder_decoder", False) or hasattr(tokenizer, "image_processor"):
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
    from .data.errors import SOURCE_COLUMN

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
