"""``orpo eval``: how well a model prefers the chosen answers of a preference set to the rejected ones.

Eval scores exactly what training scores: rows go through the training data path
(:func:`orpo.data.load_preference_data`, then :func:`orpo.data.prepare_preference_dataset` with an
:class:`orpo.ORPOConfig`'s length limits and row policies, so the same chat template, BOS/EOS and
truncation), batches are padded by the training collator, and each completion's average log-prob
per token comes from :func:`orpo.loss.sequence_logps`.  A pair is won when the chosen completion's
average log-prob is above the rejected one's (``rewards/accuracies`` during training).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from orpo.data.errors import SOURCE_COLUMN
from orpo.models.generation import stop_token_ids

#: Summary of a set of pairs: what ``summarize`` returns and ``--json`` prints per model and group.
METRICS = ("pairs", "accuracy", "ties", "chosen_logp", "rejected_logp", "margin", "log_odds")
_FILE_OF = re.compile(r"^(.*?), (?:line|record) \d+")


@dataclass(frozen=True)
class PairScores:
    """Average log-prob per completion token of each pair's chosen and rejected answer.

    Attributes:
        chosen: float32 ``[pairs]``, the chosen answers' average per-token log-probs.
        rejected: float32 ``[pairs]``, the rejected answers'.
        rows: each pair's source row ("data.jsonl, line 3 (row 2)", or its index), to line up two models.
    """

    chosen: Any  # float32 tensor [pairs]
    rejected: Any  # float32 tensor [pairs]
    rows: list[str]  # each pair's source row ("data.jsonl, line 3 (row 2)"), to line up two models

    @property
    def wins(self) -> Any:
        """Bool ``[pairs]``: the chosen answer is strictly more likely (a tie is no win)."""
        return self.chosen > self.rejected


def eval_config(**limits: Any) -> Any:
    """The ORPOConfig whose data settings eval uses: training's defaults unless given (max_length...).

    Args:
        **limits: ``ORPOConfig`` fields to set (``max_length``, ``on_too_long``...).
    """
    from orpo.config.orpo_config import ORPOConfig

    return ORPOConfig(output_dir="orpo-eval", report_to="none", **limits)


def prepare_pairs(data: Any, tokenizer: Any, config: Any = None, split: str = "eval") -> tuple[Any, Any]:
    """Preference rows (a datasets.Dataset or list of dicts) -> (tokenized pairs, DataReport), as training does.

    Args:
        data: the preference rows.
        tokenizer: the model's tokenizer.
        config: the ``ORPOConfig`` whose data settings apply; None: :func:`eval_config`'s.
        split: the split's name in messages.
    """
    from orpo.data import prepare_preference_dataset

    return prepare_preference_dataset(data, tokenizer, config if config is not None else eval_config(), split)


def score_pairs(model: Any, pairs: Any, pad_token_id: int, batch_size: int = 8) -> PairScores:
    """One forward pass per batch of ``batch_size`` pairs over tokenized ``pairs`` (from :func:`prepare_pairs`).

    Args:
        model: a causal LM, in eval mode for the passes, then back in its mode.
        pairs: tokenized pairs (a ``datasets.Dataset``).
        pad_token_id: the id that pads the batches.
        batch_size: pairs per forward pass (2 x ``batch_size`` rows).
    """
    import torch

    from orpo.loss import sequence_logps
    from orpo.scoring.collate import ORPODataCollator

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
    """The ``METRICS`` of the pairs ``select`` picks (a bool mask; default all), averaged over pairs.

    Args:
        scores: the pairs' scores.
        select: bool ``[pairs]`` tensor; None: every pair.

    Returns:
        The metrics by name; ``pairs`` 0 and the others None when nothing is selected.
    """
    from orpo.loss import odds_ratio_loss

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
    """Each pair's group: the value of column ``by``, or (``by_file``) the file its row came from.

    Args:
        pairs: tokenized pairs (a ``datasets.Dataset``).
        by: a column of the data to group by; None: no grouping (unless ``by_file``).
        by_file: group by source file (takes precedence over ``by``).

    Returns:
        One label per pair, or None when neither is asked for.

    Raises:
        DataError: ``by`` is no column to group by, or ``by_file`` for rows not read from files.
    """
    from orpo.data import DataError

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
    """Summary of all pairs, and of each group (sorted by name) when ``groups`` labels the pairs.

    Args:
        scores: the pairs' scores.
        groups: one label per pair (:func:`group_labels`), or None.
    """
    import torch

    result = summarize(scores)
    if groups is not None:
        labels = sorted(set(groups))
        result["groups"] = {
            label: summarize(scores, torch.tensor([g == label for g in groups], dtype=torch.bool)) for label in labels
        }
    return result


def compare(first: PairScores, second: PairScores) -> dict[str, int]:
    """Pair by pair, on the rows both models scored: which model prefers the chosen answer.

    Args:
        first: the first model's scores.
        second: the second model's, matched to the first's by ``rows``.

    Returns:
        Counts of ``pairs`` compared and of those ``both``, ``first_only``, ``second_only`` and ``neither`` won.
    """
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
    stop token; prompts are left-padded into batches of ``batch_size`` sequences.

    Args:
        model: a causal LM, in eval mode for generation, then back in its mode.
        tokenizer: its tokenizer (stop tokens, padding, decoding).
        prompt_ids: the tokenized prompts.
        num_samples: completions per prompt.
        temperature: sampling temperature; 0: greedy.
        max_new_tokens: the most tokens generated per completion.
        seed: seeds torch's generator first (sampling is reproducible).
        batch_size: sequences per ``generate`` call.

    Returns:
        Per prompt, its ``num_samples`` decoded completions.
    """
    import torch

    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stops), 0)  # pads only
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
