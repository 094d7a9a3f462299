"""``orpo demo``: what ORPO adds over supervised fine-tuning, measured on one tiny model, offline.

A 2-layer Llama is built from scratch and first taught a habit: it answers every sum with a hedge
(``6 + 17 = 23, I think.``).  From that one base model, two runs align it with the same preference
pairs, steps, learning rate and seed: SFT (``beta=0``, the NLL of the chosen answers only) and ORPO.
Half of the chosen answers still hedge (the better of two hedged answers is still hedged, see
:mod:`orpo.demo.build_assets`), so SFT learns to imitate that; ORPO also sees that every rejected
answer hedges.  On 80 sums no training file has, :mod:`orpo.training.evaluation` scores preference accuracy
and log-probs, and the models' generations are checked for the hedge and for the right sum.
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


def run_demo(
    output_dir: str = "orpo-demo", fast: bool = False, steps: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Build the base model, align it with SFT and with ORPO, print what each did; return the numbers."""
    import torch

    # One thread: a model this small gains nothing from more, and a single thread cannot stall
    # at OpenMP barriers when other processes share the cores (that can slow training 10x).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from .experiment import Demo

        return Demo(Path(output_dir), fast, steps, seed).run()
    finally:
        torch.set_num_threads(threads)
