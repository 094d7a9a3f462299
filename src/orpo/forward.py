"""One forward pass over a concatenated chosen+rejected batch -> per-token log-probs.

Two paths with the same result: ``plain`` reads the model's logits; ``fused`` captures the
final hidden states at the LM head and computes log-probs chunked through the head, only on
scored tokens (see :mod:`orpo.fused`).  The fused path is verified against the plain one on
the first batch and disabled, with a warning, for any model where they disagree.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch

from .fused import CHUNK_ELEMENTS, linear_selective_log_softmax
from .loss import selective_log_softmax

logger = logging.getLogger(__name__)

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "image_grid_thw", "image_sizes")


class TokenScores(NamedTuple):
    """Per (shifted) position: log-prob of the target, mean logit, and whether it is scored."""

    logps: torch.Tensor  # float32 [rows, L-1], 0 where not scored
    logit_means: torch.Tensor  # float32 [rows, L-1], detached, 0 where not scored
    mask: torch.Tensor  # bool [rows, L-1]
    targets: torch.Tensor  # long [rows, L-1]


def shifted_targets(batch: dict[str, torch.Tensor], ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets for positions 0..L-2: completion labels, plus prompt labels when the NLL needs them."""
    targets = batch["labels"][:, 1:]
    if "nll_labels" in batch:
        targets = torch.where(targets != ignore_index, targets, batch["nll_labels"][:, 1:])
    return targets, targets != ignore_index


def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {key: batch[key] for key in MODEL_INPUT_KEYS if key in batch}


def _scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)


def _chunked_mean(logits: torch.Tensor) -> torch.Tensor:
    step = max(1, CHUNK_ELEMENTS // max(logits.shape[-1], 1))
    return torch.cat([logits[i : i + step].float().mean(-1) for i in range(0, logits.shape[0], step)])


def plain_scores(model: torch.nn.Module, batch: dict[str, Any], ignore_index: int) -> TokenScores:
    targets, mask = shifted_targets(batch, ignore_index)
    logits = model(**_model_inputs(batch), use_cache=False).logits[:, :-1]
    selected = logits[mask]
    logps = selective_log_softmax(selected, targets[mask])
    with torch.no_grad():
        means = _chunked_mean(selected.detach())
    return TokenScores(_scatter(logps, mask), _scatter(means, mask), mask, targets)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _head_transform(model: torch.nn.Module) -> tuple[float | None, float | None]:
    """(softcap, scale) that the model applies to its logits, read from the config."""
    config = getattr(unwrap(model), "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    return softcap, scale


def output_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The model's LM head if it is a plain Linear we can replicate (not LoRA-wrapped or quantized)."""
    try:
        head = unwrap(model).get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if type(head) is not torch.nn.Linear:
        return None
    return head


def fused_scores(model: torch.nn.Module, batch: dict[str, Any], ignore_index: int, head: torch.nn.Linear) -> TokenScores:
    targets, mask = shifted_targets(batch, ignore_index)
    captured: dict[str, torch.Tensor] = {}

    def capture(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        captured["hidden"] = args[0]
        # The head still runs, on one position only; its output is unused.
        return (args[0][..., :1, :], *args[1:])

    handle = head.register_forward_pre_hook(capture)
    try:
        model(**_model_inputs(batch), use_cache=False)
    finally:
        handle.remove()
    hidden = captured["hidden"][:, :-1]
    softcap, scale = _head_transform(model)
    logps, means = linear_selective_log_softmax(
        hidden[mask], head.weight, targets[mask], head.bias, softcap=softcap, scale=scale
    )
    return TokenScores(_scatter(logps, mask), _scatter(means, mask), mask, targets)


class TokenScorer:
    """Chooses the fused path when it is exact for this model, else the plain path."""

    def __init__(self, fused: bool, ignore_index: int = -100, allow_fused: bool = True) -> None:
        self.want_fused = fused and allow_fused
        self.ignore_index = ignore_index
        self._verified: bool | None = None

    def _verify(self, model: torch.nn.Module, batch: dict[str, Any], head: torch.nn.Linear) -> bool:
        rows = {key: value[:1, :32] for key, value in _model_inputs(batch).items() if torch.is_tensor(value)}
        if "pixel_values" in batch or len(rows) != len(_model_inputs(batch)):
            return False
        probe = {**rows, "labels": rows["input_ids"].clone()}
        with torch.no_grad():
            was_training = model.training
            model.eval()
            try:
                plain = plain_scores(model, probe, self.ignore_index).logps
                fused = fused_scores(model, probe, self.ignore_index, head).logps
            finally:
                model.train(was_training)
        ok = bool(torch.allclose(plain, fused, rtol=1e-3, atol=1e-3 * (1 + plain.abs().max().item())))
        if not ok:
            logger.warning(
                "fused LM-head log-probs differ from the model's own logits for %s (max abs diff %.3g); "
                "using the plain path",
                type(unwrap(model)).__name__,
                (plain - fused).abs().max().item(),
            )
        return ok

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any]) -> TokenScores:
        head = output_head(model) if self.want_fused else None
        if head is not None and self._verified is None:
            self._verified = self._verify(model, batch, head)
        if head is not None and self._verified:
            return fused_scores(model, batch, self.ignore_index, head)
        return plain_scores(model, batch, self.ignore_index)

    @property
    def uses_fused(self) -> bool | None:
        return self._verified if self.want_fused else False
