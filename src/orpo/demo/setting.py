"""The demo's fixed setting (assets, sizes, steps, rates) in one module every demo module imports.

It imports no other demo module, so :mod:`orpo.demo.experiment`, :mod:`orpo.demo.report` and
:mod:`orpo.demo.claims` share these numbers without importing each other or the package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).with_name("assets")

# Full demo / fast demo (tests): base steps, alignment steps, rows of base/train/held-out data, samples per prompt.
BASE_STEPS, STEPS, SAMPLES = 600, 300, 16
FAST_BASE_STEPS, FAST_STEPS, FAST_SAMPLES, FAST_ROWS = 40, 16, 2, 96
BASE_LR, LR, BETA, BATCH = 3e-3, 1e-3, 2.0, 16
MAX_LENGTH, MAX_PROMPT_LENGTH = 64, 40
EXAMPLES = 4
MAX_NEW_TOKENS = 24  # the longest answer, '19 + 19 = 38, but I am not sure.', is 19 tokens with its EOS
#: Torch threads of a demo run: a model this small gains nothing from more, and one thread cannot stall at
#: OpenMP barriers when other processes share the cores (that can slow training 10x).
THREADS = 1


def load_rows(name: str) -> list[dict[str, Any]]:
    with (ASSETS / name).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ASSETS))


def build_model(tokenizer: Any, seed: int = 0) -> Any:
    """A small Llama, random init: 2 layers, hidden size 64 (~0.1M parameters), tied embeddings."""
    from orpo.demo.tiny import tiny_causal_lm

    return tiny_causal_lm(
        tokenizer,
        "llama",
        hidden_size=64,
        num_layers=2,
        seed=seed,
        tie_word_embeddings=True,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
