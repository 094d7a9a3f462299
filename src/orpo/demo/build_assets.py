"""Build the demo's shipped assets: the preference data and the tokenizer trained on it.

Run once, from the repository root; the output is committed under ``src/orpo/demo/assets``::

    python -m orpo.demo.build_assets

The task: answer ``What is a + b?`` (a, b in 0..19, in a few phrasings) in the strict format
``a + b = c``.  Each training pair prefers that answer to either a wrong sum in the same format
("wrong") or the right sum said in a chatty, hedging way ("chatty").  80 of the 400 sums are
held out: the model never sees them in training, so held-out preference accuracy and the
generations measure what it generalised.  Everything is seeded, so the files are reproducible.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from orpo.testing import CHATML_TEMPLATE
from orpo.testing import build_tokenizer as byte_level_bpe

ASSETS = Path(__file__).with_name("assets")
MAX_OPERAND = 19
HELD_OUT_FRACTION = 0.2
SEED = 1234

QUESTIONS = ("What is {a} + {b}?", "Compute {a} + {b}.", "{a} + {b} = ?", "How much is {a} plus {b}?")
CHATTY = (
    "Hmm, I think it is {s}, but I am not sure.",
    "Well, let me think... maybe {s}?",
    "That is a tricky one! Probably around {s}.",
    "I guess the answer could be {s}, more or less.",
    "Good question. It might be {s}, I think.",
)
WRONG_OFFSETS = (-10, -2, -1, 1, 2, 10)

#: ChatML with a leading BOS (like many instruct models).
CHAT_TEMPLATE = CHATML_TEMPLATE
VOCAB_SIZE = 320


def answer(a: int, b: int) -> str:
    return f"{a} + {b} = {a + b}"


def _wrong(rng: random.Random, a: int, b: int) -> int:
    s = a + b
    choices = [s + d for d in WRONG_OFFSETS if s + d >= 0]
    return rng.choice(choices)


def _pair(rng: random.Random, a: int, b: int, kind: str) -> dict:
    question = rng.choice(QUESTIONS).format(a=a, b=b)
    rejected = f"{a} + {b} = {_wrong(rng, a, b)}" if kind == "wrong" else rng.choice(CHATTY).format(s=a + b)
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": answer(a, b)}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "kind": kind,
    }


def build_data(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    facts = [(a, b) for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1)]
    rng.shuffle(facts)
    held = round(len(facts) * HELD_OUT_FRACTION)
    held_out, train_facts = facts[:held], facts[held:]
    train = [_pair(rng, a, b, kind) for a, b in train_facts for kind in ("wrong", "chatty", "wrong", "chatty")]
    rng.shuffle(train)
    heldout = [_pair(rng, a, b, kind) for a, b in held_out for kind in ("wrong", "chatty")]
    return train, heldout


def corpus(rows: list[dict]) -> list[str]:
    texts = []
    for row in rows:
        for key in ("prompt", "chosen", "rejected"):
            texts.extend(message["content"] for message in row[key])
    texts.extend(["user", "assistant", "system", "\n"])
    return texts


def build_tokenizer(texts: list[str]):  # type: ignore[no-untyped-def]
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
    train, heldout = build_data()
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "heldout.jsonl", heldout)
    tokenizer = build_tokenizer(corpus(train))
    tokenizer.save_pretrained(str(out))
    print(
        f"wrote {len(train)} training and {len(heldout)} held-out pairs and a {len(tokenizer)}-token tokenizer to {out}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS)
    build(parser.parse_args().out)
