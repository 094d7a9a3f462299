"""Per-token log-probs of a chosen+rejected batch, in one forward pass, whatever its layout.

Two ways to the same numbers: *plain* reads the model's logits; *fused* captures the final
hidden states at the LM head and computes log-probs chunked through the head, only on scored
tokens (see :mod:`orpo.scoring.fused`).  Padding-free and shared-prompt batches (see :mod:`orpo.scoring.layouts`)
run as one row, attention per segment (:mod:`orpo.scoring.attention`), and come back in the padded layout.  Each faster way is checked once,
by :func:`verify`, against the plain padded way and replaced by it, with a warning, for a
model where the two differ.  :class:`TokenScorer` makes these choices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from orpo.loss import rows_per_chunk, selective_log_softmax
from orpo.scoring.attention import segment_forward_kwargs
from orpo.scoring.fused import HeadCapture, linear_selective_log_softmax
from orpo.scoring.layouts import (
    SCORE_INDEX_KEY,
    SCORE_SOURCE_KEY,
    SEGMENTS_KEY,
    Layout,
    place_scored,
    segments_of,
)
from orpo.scoring.layouts import targets as layout_targets
from orpo.scoring.model_view import _config, attn_implementation_of, unwrap
from orpo.scoring.moe import forward_options
from orpo.scoring.segments import packing_probe, shared_prompt_probe

logger = logging.getLogger(__name__)

MODEL_INPUT_KEYS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    # vision-language models (orpo.models.vision)
    "pixel_values",
    "image_grid_thw",
    "image_sizes",
    "mm_token_type_ids",
    # encoder-decoder models (orpo.models.encoder_decoder): input_ids/attention_mask feed the encoder
    "decoder_input_ids",
    "decoder_attention_mask",
)


class TokenScores(NamedTuple):
    """Per (shifted) position of the padded layout: log-prob of the target, mean logit, and whether it is scored.

    Attributes:
        logps: float32 ``[rows, L-1]``, the target's log-prob; 0 where not scored.
        logit_means: float32 ``[rows, L-1]``, detached mean logit over the vocabulary; 0 where not scored.
        mask: bool ``[rows, L-1]``, the scored positions.
        targets: long ``[rows, L-1]``, the token each position predicts (``ignore_index`` where none).
    """

    logps: torch.Tensor  # float32 [rows, L-1], 0 where not scored
    logit_means: torch.Tensor  # float32 [rows, L-1], detached, 0 where not scored
    mask: torch.Tensor  # bool [rows, L-1]
    targets: torch.Tensor  # long [rows, L-1]


def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {key: batch[key] for key in MODEL_INPUT_KEYS if key in batch}


def _scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)


# ---- what the scoring reads from the model -----------------------------------------------------


def _compute_dtype(model: torch.nn.Module, device: torch.device) -> torch.dtype:
    """The dtype the model's matmuls run in: autocast's if on, else the parameters'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def run_capturing_head(model: torch.nn.Module, inputs: dict[str, Any], head: torch.nn.Linear) -> torch.Tensor:
    """Run ``model`` on ``inputs`` and return the final hidden states its LM head ``head`` received.

    Args:
        model: the model to run (wrapped or not).
        inputs: its forward's keyword arguments.
        head: the model's LM head (a plain Linear).

    Raises:
        RuntimeError: the forward never called ``head``.
    """
    capture = HeadCapture.of(head)
    capture.armed = True
    try:
        model(**inputs, **forward_options(model))
        hidden = capture.hidden
    finally:
        capture.armed, capture.hidden = False, None
    if hidden is None:
        raise RuntimeError(f"the LM head of {type(unwrap(model)).__name__} was not called during the forward pass")
    return hidden


def _from_hidden(
    model: torch.nn.Module, head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and mean logits of scored rows of hidden states, through the head and the model's logit transform."""
    config = _config(model)
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    return linear_selective_log_softmax(hidden, head.weight, targets, head.bias, softcap=softcap, scale=scale)


def _from_logits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and mean logits (float32, in chunks) of scored rows of logits."""
    logps = selective_log_softmax(logits, targets)
    with torch.no_grad():
        detached = logits.detach()
        step = rows_per_chunk(logits.shape[-1], logits.device)
        means = torch.cat([detached[i : i + step].float().mean(-1) for i in range(0, detached.shape[0], step)])
    return logps, means


# ---- the ways to score -------------------------------------------------------------------------


def _scored_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of ``values`` ``[rows, L, D]`` at the scored positions ``index`` (flat over ``[rows, L-1]``:
    ``r * (L-1) + c``, i.e. ``r * L + c - r`` in ``values``): a gather, no host sync."""
    return values.reshape(-1, values.shape[-1]).index_select(0, index + index // (values.shape[1] - 1))


def _placed(
    scores: tuple[torch.Tensor, ...], index: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor
) -> TokenScores:
    """Log-probs and mean logits of the positions ``index`` in the padded layout (an ``index_copy``,
    whose backward is a gather): where padded and row batches meet."""
    logps, means = scores
    return TokenScores(place_scored(logps, index, mask.shape), place_scored(means, index, mask.shape), mask, targets)


def _padded_scores(
    batch: dict[str, Any], ignore_index: int, values: torch.Tensor, score: Callable[..., tuple[torch.Tensor, ...]]
) -> TokenScores:
    """``score(rows of values, their targets)`` at the scored positions of a padded batch, in its layout.

    Our collators give the positions as ``score_index`` (gathered, no host sync); a batch from
    another collator is selected by its mask, which makes the host wait for the device.
    """
    targets = layout_targets(batch, ignore_index)
    mask = targets != ignore_index
    index = batch.get(SCORE_INDEX_KEY)
    if index is None:
        logps, means = score(values[:, :-1][mask], targets[mask])
        return TokenScores(_scatter(logps, mask), _scatter(means, mask), mask, targets)
    return _placed(score(_scored_rows(values, index), targets.reshape(-1)[index]), index, mask, targets)


def plain_scores(model: torch.nn.Module, batch: dict[str, Any], ignore_index: int) -> TokenScores:
    """Scores of a padded batch from the model's logits.

    Args:
        model: the model to run.
        batch: a padded batch (``labels``, optionally ``nll_labels`` and ``score_index``).
        ignore_index: the label of unscored positions.
    """
    logits = model(**_model_inputs(batch), **forward_options(model)).logits
    return _padded_scores(batch, ignore_index, logits, _from_logits)


def fused_scores(
    model: torch.nn.Module, batch: dict[str, Any], ignore_index: int, head: torch.nn.Linear
) -> TokenScores:
    """Scores of a padded batch through the LM head ``head``, on scored positions only.

    Args:
        model: the model to run.
        batch: a padded batch (``labels``, optionally ``nll_labels`` and ``score_index``).
        ignore_index: the label of unscored positions.
        head: the model's LM head (a plain Linear, see :func:`orpo.scoring.model_view.output_head`).
    """
    hidden = run_capturing_head(model, _model_inputs(batch), head)
    return _padded_scores(batch, ignore_index, hidden, lambda rows, targets: _from_hidden(model, head, rows, targets))


def row_inputs(row: dict[str, Any]) -> dict[str, Any]:
    """Model inputs of a padding-free or shared-prompt row: ids, positions and its segments
    (attention per segment, no mask built).

    Args:
        row: a row batch, or a view of one (``input_ids``, ``position_ids`` and ``orpo_segments``).
    """
    return {
        "input_ids": row["input_ids"],
        "position_ids": row["position_ids"],
        **segment_forward_kwargs(row[SEGMENTS_KEY]),
    }


def row_scores(
    model: torch.nn.Module, batch: dict[str, Any], ignore_index: int, head: torch.nn.Linear | None
) -> TokenScores:
    """Scores of a padding-free or shared-prompt batch in the padded layout; fused through ``head`` if given.

    The collator's ``score_source`` picks the predicting positions of the row, ``score_index``
    places their scores in the padded layout: gathers and an ``index_copy``, no host sync.

    Args:
        model: the model to run, switched to a per-segment attention.
        batch: a padding-free or shared-prompt batch.
        ignore_index: the label of unscored positions.
        head: the LM head to fuse through; None: score from the logits.
    """
    targets = layout_targets(batch, ignore_index)
    mask = targets != ignore_index
    index, source = batch[SCORE_INDEX_KEY], batch[SCORE_SOURCE_KEY]
    scored = targets.reshape(-1)[index]
    inputs = row_inputs({**batch, SEGMENTS_KEY: segments_of(batch)})
    if head is None:
        scores = _from_logits(model(**inputs, **forward_options(model)).logits[0, source], scored)
    else:
        scores = _from_hidden(model, head, run_capturing_head(model, inputs, head)[0, source], scored)
    return _placed(scores, index, mask, targets)


# ---- the one check: does a faster way compute what the reference way does? --------------------


def verify(
    model: torch.nn.Module,
    reference: Callable[[], torch.Tensor],
    candidate: Callable[[], torch.Tensor],
    tolerance: float,
    problem: str,
    fallback: str,
    rtol: float = 0.0,
) -> bool | None:
    """Whether ``candidate()`` equals ``reference()`` on a probe, to ``tolerance * (1 + max|ref|)``
    (plus ``rtol * |ref|`` per element), both run in eval mode without gradients.

    On a difference, warns ``"<problem> (max abs diff d); <fallback>"`` and returns False: the
    caller then takes the reference way.  None when either result is non-finite: such a probe
    proves nothing, so the caller takes the reference way for this batch and asks again later.

    Args:
        model: put in eval mode for the two runs, then back in its mode.
        reference: runs the trusted way, returning its result.
        candidate: runs the faster way, returning a result shaped like ``reference()``'s.
        tolerance: the absolute tolerance, relative to ``1 + max|ref|``.
        problem: the warning's first part: what differs, for which model.
        fallback: the warning's second part: what is used instead.
        rtol: the per-element relative tolerance added to it.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected, got = reference(), candidate()
    finally:
        model.train(was_training)
    dtype = torch.promote_types(torch.promote_types(expected.dtype, got.dtype), torch.float32)
    expected, got = expected.to(dtype), got.to(dtype)
    if not (torch.isfinite(expected).all() and torch.isfinite(got).all()):
        return None
    diff = (got - expected).abs()
    ok = bool((diff <= tolerance * (1 + expected.abs().max()) + rtol * expected.abs()).all())
    if not ok:
        logger.warning("%s (max abs diff %.3g); %s", problem, diff.max().item(), fallback)
    return ok


def _layout_tolerance(model: torch.nn.Module, device: torch.device) -> float:
    """How far a layout's logits may be from the padded ones: float32 rounding, or bf16/fp16's."""
    return 1e-3 if _compute_dtype(model, device) in (torch.float32, torch.float64) else 5e-2


def _fused_probe(batch: dict[str, Any]) -> dict[str, Any]:
    """A small batch to compare the fused and plain ways on: one row's first 32 tokens, or the
    whole batch when some input does not slice by row (image patches, non-tensor inputs)."""
    inputs = _model_inputs(batch)
    if "pixel_values" in batch or not all(torch.is_tensor(value) for value in inputs.values()):
        return batch
    rows = {key: value[:1, :32] for key, value in inputs.items()}
    return {**rows, "labels": rows.get("decoder_input_ids", rows["input_ids"]).clone()}


def verify_fused(
    model: torch.nn.Module, batch: dict[str, Any], head: torch.nn.Linear, ignore_index: int
) -> bool | None:
    """Whether the fused LM head gives the model's own log-probs (a model may transform its logits).

    Args:
        model: the model to check.
        batch: a padded batch to take the probe from (its first row's first 32 tokens, where it slices).
        head: the LM head to fuse through.
        ignore_index: the label of unscored positions.

    Returns:
        True, False (warned) or None (a non-finite probe), as :func:`verify` returns.
    """
    probe = _fused_probe(batch)
    return verify(
        model,
        lambda: plain_scores(model, probe, ignore_index).logps,
        lambda: fused_scores(model, probe, ignore_index, head).logps,
        1e-3,
        f"fused LM-head log-probs differ from the model's own logits for {type(unwrap(model)).__name__}",
        "using the plain path",
        rtol=1e-3,
    )


def _problem(model: torch.nn.Module, layout: Layout, what: str) -> str:
    return f"{layout.value}: {type(unwrap(model)).__name__} with attn_implementation={attn_implementation_of(model)!r} {what}"


def verify_packing(model: torch.nn.Module, batch: dict[str, Any], probe_tokens: int = 24) -> bool | None:
    """Whether the model keeps the sequences of a padding-free row apart (attention and positions):
    the row's second sequence, packed after its first, against the second one run alone.

    Args:
        model: the model, switched to a per-segment attention.
        batch: a padding-free batch to take the probe from.
        probe_tokens: tokens of each of the two sequences in the probe.

    Returns:
        The same as :func:`verify`; True for a row of one sequence (nothing to keep apart).
    """
    probe = packing_probe(batch, probe_tokens)
    if probe is None:
        return True  # one sequence: nothing to keep apart
    packed, offset, alone = probe
    return verify(
        model,
        lambda: model(input_ids=alone, **forward_options(model)).logits[0],
        lambda: model(**row_inputs(packed), **forward_options(model)).logits[0, offset:],
        _layout_tolerance(model, alone.device),
        _problem(model, Layout.PADDING_FREE, "does not keep packed sequences apart"),
        "running these batches padded instead",
    )


def verify_shared_prompt(model: torch.nn.Module, batch: dict[str, Any]) -> bool | None:
    """Whether the model runs a shared-prompt row exactly: a pair's rejected tokens, run as
    prompt | chosen | rejected, against prompt + rejected run alone.

    Args:
        model: the model, switched to a per-segment attention.
        batch: a shared-prompt batch to take the probe from.

    Returns:
        The same as :func:`verify`; True when no pair has both a prompt and a rejected completion.
    """
    probe = shared_prompt_probe(batch)
    if probe is None:
        return True  # nothing to compare; the padded fallback would not be safer
    row, rejected_start, alone, prompt = probe
    return verify(
        model,
        lambda: model(input_ids=alone, **forward_options(model)).logits[0, prompt:],
        lambda: model(**row_inputs(row), **forward_options(model)).logits[0, rejected_start:],
        _layout_tolerance(model, alone.device),
        _problem(model, Layout.SHARED_PROMPT, "does not run shared-prompt rows exactly"),
        "running these batches padded instead",
    )
