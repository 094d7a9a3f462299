"""Shared fixtures: a local tokenizer and a learnable preference set; nothing is downloaded."""

from __future__ import annotations

import os
import random

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

CORPUS = [
    "What is the color of the sky? The sky is blue. The grass is green.",
    "Answer politely. Thank you for asking, here is the answer. No. Go away.",
    "add two numbers: 2 + 3 = 5, 4 + 4 = 8, 7 + 1 = 8 correct wrong",
    "user assistant system hello world good bad yes no",
] * 20


@pytest.fixture(scope="session")
def tokenizer():
    from orpo.demo.tiny import build_tokenizer

    return build_tokenizer(CORPUS)


def learnable_pairs(n: int = 32, seed: int = 0) -> list[dict[str, str]]:
    """Pairs where the chosen answer is always 'yes ...' and the rejected always 'no ...':
    a 2-layer model learns to prefer it in a few dozen steps."""
    rng = random.Random(seed)
    words = ["sky", "grass", "hello", "world", "numbers", "answer", "color", "green"]
    rows = []
    for _ in range(n):
        topic = " ".join(rng.sample(words, 3))
        rows.append({"prompt": f"Question about {topic}?", "chosen": f" yes {topic}", "rejected": f" no {topic}"})
    return rows
