"""Padded, padding-free and shared-prompt rows of the same pairs, built here (not by the
collators), and the float64 comparison of a model's logits and gradients between them."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from orpo.scoring.segments import Segments, packed_segments, shared_prompt_segments

Pair = tuple[list[int], list[int], list[int]]  # prompt, chosen, rejected token ids


def random_pairs(vocab: int, n: int = 3, seed: int = 0, prompt=(2, 9), completion=(1, 8)) -> list[Pair]:
    rng = random.Random(seed)

    def ids(bounds: tuple[int, int]) -> list[int]:
        return [rng.randrange(5, vocab) for _ in range(rng.randrange(*bounds))]

    return [(ids(prompt), ids(completion), ids(completion)) for _ in range(n)]


@dataclass
class Rows:
    """A model input and, per padded row r and column t, the input position holding that token."""

    inputs: dict
    source: torch.Tensor  # long [2B, L]: index into the flattened input, -1 where padded
    segments: Segments | None = None


def _sequences(pairs: list[Pair]) -> list[list[int]]:
    return [p + c for p, c, _ in pairs] + [p + r for p, _, r in pairs]


def padded_rows(pairs: list[Pair], left: bool = False) -> Rows:
    sequences = _sequences(pairs)
    length = max(len(s) for s in sequences)
    ids = torch.zeros((len(sequences), length), dtype=torch.long)
    mask = torch.zeros_like(ids)
    source = torch.full_like(ids, -1)
    for row, seq in enumerate(sequences):
        cols = slice(length - len(seq), length) if left else slice(0, len(seq))
        ids[row, cols], mask[row, cols] = torch.tensor(seq), 1
        source[row, : len(seq)] = row * length + torch.arange(cols.start, cols.stop)
    return Rows({"input_ids": ids, "attention_mask": mask}, source)


def packed_rows(pairs: list[Pair], padding: int = 0) -> Rows:
    sequences = _sequences(pairs)
    length = max(len(s) for s in sequences)
    ids, positions = [], []
    source = torch.full((len(sequences), length), -1, dtype=torch.long)
    for row, seq in enumerate(sequences):
        source[row, : len(seq)] = len(ids) + torch.arange(len(seq))
        ids += seq
        positions += range(len(seq))
    segments = packed_segments([len(s) for s in sequences], len(ids) + padding)
    ids, positions = ids + [0] * padding, positions + list(range(padding))
    inputs = {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions])}
    return Rows(inputs, source, segments)


def shared_rows(pairs: list[Pair], padding: int = 0) -> Rows:
    """prompt | chosen | rejected per pair; a row's prompt tokens come from the shared prompt."""
    b = len(pairs)
    length = max(len(p) + max(len(c), len(r)) for p, c, r in pairs)
    ids, positions = [], []
    source = torch.full((2 * b, length), -1, dtype=torch.long)
    for i, (p, c, r) in enumerate(pairs):
        start = len(ids)
        for row, completion, offset in ((i, c, len(p)), (b + i, r, len(p) + len(c))):
            source[row, : len(p)] = start + torch.arange(len(p))
            source[row, len(p) : len(p) + len(completion)] = start + offset + torch.arange(len(completion))
        ids += p + c + r
        positions += [*range(len(p) + len(c)), *range(len(p), len(p) + len(r))]
    segments = shared_prompt_segments(
        [len(p) for p, _, _ in pairs], [len(c) for _, c, _ in pairs], [len(r) for _, _, r in pairs], len(ids) + padding
    )
    ids, positions = ids + [0] * padding, positions + list(range(padding))
    inputs = {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions])}
    return Rows(inputs, source, segments)


def logits_and_grads(model, rows: Rows, upstream: torch.Tensor, **kwargs) -> tuple[torch.Tensor, dict]:
    """Logits laid out as the padded rows ``[2B, L, V]`` (0 on padding) and the gradients of
    ``sum(upstream * logits)`` over the real tokens."""
    model.zero_grad(set_to_none=True)
    logits = model(**rows.inputs, **kwargs, use_cache=False).logits
    flat = logits.reshape(-1, logits.shape[-1])
    real = rows.source >= 0
    laid = flat[rows.source.clamp(min=0)] * real[..., None]
    (laid * upstream).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return laid.detach(), grads


#: Gradients of a shared prompt sum its two rows' contributions *before* the models' RMSNorm
#: backward, which runs in float32 even in a float64 model; the padded batch sums them after it.
#: Values stay exact; gradients agree to float32 rounding of their scale.
SHARED_GRAD_TOLERANCE = 2e-6


def assert_same(got: tuple, ref: tuple, tol: float, grad_tol: float | None = None) -> None:
    (logits, grads), (ref_logits, ref_grads) = got, ref
    torch.testing.assert_close(logits, ref_logits, rtol=tol, atol=tol)
    assert grads.keys() == ref_grads.keys() and len(grads) > 5
    grad_tol = tol if grad_tol is None else grad_tol
    for name, g in grads.items():
        scale = ref_grads[name].abs().max().item()
        torch.testing.assert_close(g, ref_grads[name], rtol=grad_tol, atol=grad_tol * max(scale, 1.0), msg=name)
