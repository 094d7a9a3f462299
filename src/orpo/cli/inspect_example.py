"""One example pair rendered token by token for ``orpo data inspect``: the text with the prompt/completion
boundary, every token with its label, and the checks that catch a double BOS, a missing EOS or a wrong chat
template. The labels come from the training collator, so what is shown is what training does.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from orpo.data.errors import SOURCE_COLUMN


def _token_text(tokenizer: Any, token_id: int) -> str:
    text = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _wrap(items: list[str], indent: str, width: int = 100) -> list[str]:
    lines, current = [], indent
    for item in items:
        if len(current) + len(item) + 1 > width and current.strip():
            lines.append(current.rstrip())
            current = indent
        current += item + " "
    if current.strip():
        lines.append(current.rstrip())
    return lines


def render_example(row: dict[str, Any], tokenizer: Any, limits: Any, formats: Counter) -> tuple[str, list[str]]:
    """One pair as training sees it: text with the boundary, then every token with its label."""
    from orpo.data.tokenize import NO_ROOM_FOR_COMPLETION, PairTokenizer
    from orpo.scoring.collate import ORPODataCollator

    pair = PairTokenizer(tokenizer, limits)
    encoded = pair.one(row["prompt"], row["chosen"], row["rejected"])
    warnings: list[str] = []
    location = row.get(SOURCE_COLUMN) or "row 0"
    lines = [f"example: {location}, tokenized as for training"]
    if encoded["tokenize_flags"] & NO_ROOM_FOR_COMPLETION:
        lines.append("  (this row is dropped in training: the prompt leaves no room for a completion)")
        return "\n".join(lines), warnings
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = ORPODataCollator(pad_token_id=pad)([encoded])
    prompt_ids = encoded["prompt_input_ids"]
    boundary = len(prompt_ids)
    lines.append("  '▌' marks the prompt/completion boundary; [token] has label -100 (not trained), {token} is trained")
    for index, name in enumerate(("chosen", "rejected")):
        length = int(batch["attention_mask"][index].sum())
        ids = batch["input_ids"][index, :length].tolist()
        labels = batch["labels"][index, :length].tolist()
        trained = sum(label != -100 for label in labels)
        lines.append("")
        lines.append(
            f"  {name}: {length} tokens = prompt {boundary} + completion {length - boundary}, {trained} trained"
        )
        text = (
            tokenizer.decode(ids[:boundary], skip_special_tokens=False)
            + "▌"
            + tokenizer.decode(ids[boundary:], skip_special_tokens=False)
        )
        lines.append("    text:")
        lines.extend("      " + line for line in text.split("\n"))
        tokens = []
        for position, (token_id, label) in enumerate(zip(ids, labels, strict=True)):
            if position == boundary:
                tokens.append("▌")
            shown = _token_text(tokenizer, token_id)
            tokens.append(f"[{shown}]" if label == -100 else "{" + shown + "}")
        lines.append("    tokens:")
        lines.extend(_wrap(tokens, "      "))
        lines.append("    ids:    " + " ".join(map(str, ids[:boundary])) + " ▌ " + " ".join(map(str, ids[boundary:])))
        lines.append("    labels: " + _compress(labels))
        warnings.extend(_checks(name, ids, boundary, labels, tokenizer))
    checks = _summary_checks(prompt_ids, batch, tokenizer, row, formats)
    warnings.extend(checks)
    return "\n".join(lines), list(dict.fromkeys(warnings))


def _compress(labels: list[int]) -> str:
    """'-100 x15 | 52 4' style: runs of -100 compressed."""
    parts, run = [], 0
    for label in labels:
        if label == -100:
            run += 1
            continue
        if run:
            parts.append(f"-100 x{run} |")
            run = 0
        parts.append(str(label))
    if run:
        parts.append(f"-100 x{run}")
    return " ".join(parts)


def _checks(name: str, ids: list[int], boundary: int, labels: list[int], tokenizer: Any) -> list[str]:
    out = []
    eos = tokenizer.eos_token_id
    completion = ids[boundary:]
    if not completion or completion[-1] != eos:
        out.append(f"the {name} completion does not end with EOS ({tokenizer.eos_token!r}): it was truncated")
    elif completion.count(eos) > 1 and completion[-2] == eos:
        out.append(f"the {name} completion ends with EOS twice")
    if all(label == -100 for label in labels):
        out.append(f"the {name} sequence has no trained token")
    return out


def _summary_checks(
    prompt_ids: list[int], batch: Any, tokenizer: Any, row: dict[str, Any], formats: Counter
) -> list[str]:
    from orpo.data.tokenize import SpecialTokens

    out = []
    bos = tokenizer.bos_token_id
    if bos is not None and SpecialTokens.probe(tokenizer).adds_bos and (not prompt_ids or prompt_ids[0] != bos):
        out.append(
            f"the example's prompt does not start with BOS ({tokenizer.bos_token!r}) although this tokenizer adds one: "
            "prompt truncation cut it (truncation_mode=keep_end); raise max_prompt_length"
        )
    if bos is not None:
        count = 0
        while count < len(prompt_ids) and prompt_ids[count] == bos:
            count += 1
        if count > 1:
            out.append(f"the prompt starts with {count} BOS tokens ({tokenizer.bos_token!r})")
        bos_inside = prompt_ids[count:].count(bos)
        if bos_inside:
            out.append(f"BOS ({tokenizer.bos_token!r}) appears {bos_inside} more time(s) inside the prompt")
    plain = sum(count for name, count in formats.items() if name in ("standard", "implicit_standard"))
    if plain and getattr(tokenizer, "chat_template", None):
        out.append(
            f"{plain} row(s) are plain strings: no chat template is applied to them (the text is used as is); if "
            "this is a chat model, give prompt/chosen/rejected as message lists so its template is applied"
        )
    prompt, chosen = row["prompt"], row["chosen"]
    if prompt and chosen and not prompt[-1].isspace() and not chosen[0].isspace():
        out.append(
            "the example's prompt and completion meet without a space or newline "
            f"({prompt[-12:]!r} + {chosen[:12]!r}); check the separator"
        )
    return out
