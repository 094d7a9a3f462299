"""Synthetic preference pairs for bench_orpo.py, with realistic length distributions.

The text is pseudo-words from a fixed list; the benchmark's tokenizer (a BPE of 8192 tokens
trained on it) spells almost every word as one token (1.01 tokens per word measured), so the
lengths below, drawn in words, are token counts to within a few percent.  The benchmark prints
the token medians it actually got.

* ``uniform``: word counts uniform in ``--prompt-words`` / ``--completion-words``;
* ``ultrafeedback``: like UltraFeedback's pairs, prompt median ~120 tokens, completions ~290,
  each lognormal (prompts spread wider: a long tail of pasted context); drawn in words, the
  BOS and punctuation add a few tokens;
* ``long-prompt``: prompt median ~1000 tokens, completions ~300 (RAG / document QA), where a
  shared prompt saves the most.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple


class Lognormal(NamedTuple):
    median: float
    sigma: float
    low: int
    high: int

    def draw(self, rng: random.Random, high: int | None = None) -> int:
        top = min(self.high, high) if high is not None else self.high
        return max(self.low, min(top, round(rng.lognormvariate(math.log(self.median), self.sigma))))


#: name -> (prompt, completion) distributions in words; None: uniform bounds from the command line
DISTRIBUTIONS: dict[str, tuple[Lognormal, Lognormal] | None] = {
    "uniform": None,
    "ultrafeedback": (Lognormal(112, 0.8, 8, 500), Lognormal(288, 0.5, 8, 1000)),
    "long-prompt": (Lognormal(1000, 0.25, 400, 1700), Lognormal(300, 0.35, 30, 1000)),
}
#: max_length each distribution needs (a pair longer than the limit would be truncated differently
#: by the two trainers; the benchmark refuses those)
MAX_LENGTH = {"uniform": 1024, "ultrafeedback": 1024, "long-prompt": 2048}


def _word_list(rng: random.Random, count: int = 4000) -> list[str]:
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"] + ["th", "ch", "st", "qu", "er", "an", "on"]
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(syllables) for _ in range(rng.choice((1, 2, 2, 3)))))
    return sorted(words)


def make_pairs(
    total: int,
    seed: int,
    distribution: str,
    prompt_words: tuple[int, int],
    completion_words: tuple[int, int],
    max_length: int,
) -> list[dict[str, str]]:
    """``total`` pairs; every sequence (prompt + completion, + a few special tokens) fits ``max_length``."""
    rng = random.Random(seed)
    words = _word_list(rng)
    shapes = DISTRIBUTIONS[distribution]
    room = max_length - 8  # BOS, punctuation and the odd two-token word

    def text(count: int) -> str:
        return " ".join(rng.choice(words) for _ in range(count))

    pairs = []
    for _ in range(total):
        if shapes is None:
            p, c, r = rng.randint(*prompt_words), rng.randint(*completion_words), rng.randint(*completion_words)
        else:
            prompt, completion = shapes
            p = prompt.draw(rng, room // 2)
            c, r = completion.draw(rng, room - p), completion.draw(rng, room - p)
        pairs.append({"prompt": text(p) + "?", "chosen": " " + text(c) + ".", "rejected": " " + text(r) + "."})
    return pairs
