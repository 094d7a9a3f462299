"""Per-token log-probs of one forward pass over a concatenated chosen+rejected batch.

Two paths with the same result: ``plain`` reads the model's logits; ``fused`` captures the
final hidden states at the LM head and computes log-probs chunked through the head, only on
scored tokens (see :mod:`orpo.fused`).  :class:`orpo.forward.TokenScorer` picks between them.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch

from .fused import chunk_elements, linear_selective_log_softmax
from .loss import selective_log_softmax

# Kept under the name these paths always logged as, so log filters and handlers still match.
logger = logging.getLogger("orpo.forward")

MODEL_INPUT_KEYS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    # vision-language models (orpo.vision)
    "pixel_values",
    "image_grid_thw",
    "image_sizes",
    "mm_token_type_ids",
    # encoder-decoder models (orpo.seq2seq): input_ids/attention_mask feed the encoder
    "decoder_input_ids",
    "decoder_attention_mask",
)


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
    step = max(1, chunk_elements(logits.device) // max(logits.shape[-1], 1))
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


class _HeadCapture:
    """A forward pre-hook installed once on an LM head: while armed, it keeps the head's input
    (the final hidden states) and lets the head run on one position only.

    One persistent hook, installed before the model's first forward: torch.compile
    (``torch_compile``) does not guard on a module's hooks, so a hook added or removed per call
    would be missed by an already compiled model.  It does guard on ``armed``, so a compiled
    model keeps one graph for scoring and one for ordinary calls, with no graph break.
    """

    def __init__(self) -> None:
        self.armed = False
        self.hidden: torch.Tensor | None = None

    def __call__(self, _module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not self.armed:
            return None
        self.hidden = args[0]
        # The head still runs, on one position only; its output is unused.
        return (args[0][..., :1, :], *args[1:])

    @classmethod
    def of(cls, head: torch.nn.Module) -> _HeadCapture:
        capture = head.__dict__.get("_orpo_head_capture")
        if capture is None:
            capture = cls()
            head.register_forward_pre_hook(capture)
            head.__dict__["_orpo_head_capture"] = capture
        return capture


def fused_scores(
    model: torch.nn.Module, batch: dict[str, Any], ignore_index: int, head: torch.nn.Linear
) -> TokenScores:
    targets, mask = shifted_targets(batch, ignore_index)
    capture = _HeadCapture.of(head)
    capture.armed = True
    try:
        model(**_model_inputs(batch), use_cache=False)
        hidden = capture.hidden
    finally:
        capture.armed, capture.hidden = False, None
    if hidden is None:
        raise RuntimeError(f"the LM head of {type(unwrap(model)).__name__} was not called during the forward pass")
    hidden = hidden[:, :-1]
    softcap, scale = _head_transform(model)
    logps, means = linear_selective_log_softmax(
        hidden[mask], head.weight, targets[mask], head.bias, softcap=softcap, scale=scale
    )
    return TokenScores(_scatter(logps, mask), _scatter(means, mask), mask, targets)
