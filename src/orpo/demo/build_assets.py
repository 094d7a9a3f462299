"""Build the demo's shipped assets: the base model's data, the preference data and the tokenizer.

Run once, from the repository root; the output is committed under ``src/orpo/demo/assets``::

    python -m orpo.demo.build_assets

The task: answer ``What is a + b?`` (a, b in 0..19, in four phrasings).  The *base* model is taught
a habit first: ``base.jsonl`` answers every training sum with a hedge (``6 + 17 = 23, I think.``).
The preference pairs then say the hedge is unwanted, as a labeller comparing two answers would:

- ``hedged``: the plain answer ``6 + 17 = 23`` is preferred to the same answer hedged;
- ``wrong``: a right sum is preferred to a wrong one, both hedged (``6 + 17 = 23, I think.`` over
  ``6 + 17 = 24, I think.``): the better of two hedged answers is still hedged.

So half of the chosen answers hedge.  Supervised fine-tuning on the chosen answers imitates that;
ORPO also sees that every rejected answer hedges.  80 of the 400 sums are held out: no training
file has them, so held-out numbers measure what the models generalised.  Everything is seeded, so
the files are reproducible (a test rebuilds them).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from orpo.demo.tiny import CHATML_TEMPLATE
from orpo.demo.tiny import build_tokenizer as byte_level_bpe

ASSETS = Path(__file__).with_name("assets")
MAX_OPERAND = 19
HELD_OUT_FRACTION = 0.2
SEED = 1234

QUESTIONS = ("What is {a} + {b}?", "Compute {a} + {b}.", "{a} + {b} = ?", "How much is {a} plus {b}?")
HEDGES = (", I think.", ", but I am not sure.", ", more or less.", ", probably.", ", I guess.")
WRONG_OFFSETS = (-10, -2, -1, 1, 2, 10)
KINDS = ("hedged", "wrong")

#: ChatML with a leading BOS (like many instruct models).
CHAT_TEMPLATE = CHATML_TEMPLATE
VOCAB_SIZE = 320


def answer(a: int, b: int) -> str:
    return f"{a} + {b} = {a + b}"


def _wrong(rng: random.Random, a: int, b: int) -> str:
    s = a + b
    return f"{a} + {b} = {rng.choice([s + d for d in WRONG_OFFSETS if s + d >= 0])}"


def _row(question: str, chosen: str, rejected: str, **extra: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        **extra,
    }


def _pair(rng: random.Random, a: int, b: int, kind: str) -> dict:
    question = rng.choice(QUESTIONS).format(a=a, b=b)
    hedge = rng.choice(HEDGES)
    if kind == "hedged":
        return _row(question, answer(a, b), answer(a, b) + hedge, kind=kind)
    return _row(question, answer(a, b) + hedge, _wrong(rng, a, b) + hedge, kind=kind)


def _base_rows(rng: random.Random, a: int, b: int) -> list[dict]:
    """Two hedged answers per sum, in two phrasings (a pair each, for ORPOTrainer; beta=0 reads chosen only)."""
    rows = []
    for question in rng.sample(QUESTIONS, 2):
        hedge = rng.choice(HEDGES)
        rows.append(_row(question.format(a=a, b=b), answer(a, b) + hedge, _wrong(rng, a, b) + hedge))
    return rows


def build_data(seed: int = SEED) -> tuple[list[dict], list[dict], list[dict]]:
    """(base, train, heldout) rows."""
    rng = random.Random(seed)
    facts = [(a, b) for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1)]
    rng.shuffle(facts)
    held = round(len(facts) * HELD_OUT_FRACTION)
    held_out, train_facts = facts[:held], facts[held:]
    base = [row for a, b in train_facts for row in _base_rows(rng, a, b)]
    rng.shuffle(base)
    train = [_pair(rng, a, b, kind) for a, b in train_facts for kind in KINDS]
    rng.shuffle(train)
    heldout = [_pair(rng, a, b, kind) for a, b in held_out for kind in KINDS]
    return base, train, heldout


def corpus(rows: list[dict]) -> list[str]:
    texts: list[str] = []
    for row in rows:
        for key in ("prompt", "chosen", "rejected"):
            texts.extend(message["content"] for message in row[key])
    texts.extend(["user", "assistant", "system", "\n"])
    return texts


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE with one token per digit (so numbers are spelled digit by digit)."""
    return byte_level_bpe(
        texts, vocab_size=VOCAB_SIZE, chat_template=CHAT_TEMPLATE, split_digits=True, model_max_length=128
    )


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def build(out: Path = ASSETS) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base, train, heldout = build_data()
    for name, rows in (("base.jsonl", base), ("train.jsonl", train), ("heldout.jsonl", heldout)):
        write_jsonl(out / name, rows)
    tokenizer = build_tokenizer(corpus(base + train))
    tokenizer.save_pretrained(str(out))
    print(
        f"wrote {len(base)} base rows, {len(train)} training and {len(heldout)} held-out pairs and a "
        f"{len(tokenizer)}-token tokenizer to {out}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS)
    build(parser.parse_args().out)
