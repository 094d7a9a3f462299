"""The ORPO objective as pure tensor functions: no model, no trainer.

Sign convention (the only place it is defined): every loss term returned here is
*positive and minimised*.  The total objective is

    loss = nll + mean_over_pairs(-beta * logsigmoid(log_odds))

which is the paper's ``L_SFT + lambda * L_OR`` and TRL's ``nll - beta * mean(logsigmoid)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

# Float32 elements of one chunk of logits: ~256 MiB on GPU whatever the vocabulary size.  On CPU
# a fresh 256 MiB buffer per chunk costs more in page faults than the matmul; 8 MiB chunks are faster.
CHUNK_ELEMENTS = 1 << 26
CPU_CHUNK_ELEMENTS = 1 << 21


def rows_per_chunk(columns: int, device: torch.device) -> int:
    """Rows of ``columns`` values processed at once: the chunk size of every chunked loop in orpo.

    Args:
        columns: values per row (the vocabulary size for logits).
        device: where the rows live; CPU gets the smaller budget.
    """
    budget = CHUNK_ELEMENTS if device.type != "cpu" else CPU_CHUNK_ELEMENTS
    return max(1, budget // max(columns, 1))


__all__ = [
    "MAX_AVG_LOGP",
    "MIN_AVG_LOGP",
    "ORPOLossOutput",
    "OddsRatioOutput",
    "PairCounts",
    "PairLogps",
    "SequenceLogps",
    "log1mexp",
    "odds_ratio_loss",
    "orpo_loss",
    "pair_counts",
    "pair_logps",
    "selective_log_softmax",
    "sequence_logps",
    "token_logps",
]

#: Average log-probs are clamped into [MIN_AVG_LOGP, MAX_AVG_LOGP] before the odds are taken.
#: At avg logp == 0 the odds are infinite and d/dx log(1 - e^x) = -1/x blows up; at -inf the
#: loss is infinite.  Inside the range the loss is exact; a real completion never averages
#: below -1e4 nats/token, and above -1e-6 the odds-ratio term is already ~0.
MAX_AVG_LOGP = -1e-6
MIN_AVG_LOGP = -1e4
_LN2 = math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0`` with finite values *and* finite gradients.

    Peers use ``where(x < -ln2, log1p(-exp(x)), log(-expm1(x)))``; autograd still
    differentiates the unused branch, so its inf/NaN leaks into the gradient (0 * inf).  Here
    each branch only ever sees inputs that are safe for it ("double where"), and ``x`` is
    clamped below zero so the value at ``x == 0`` is finite.

    Args:
        x: log-probabilities, ``<= 0``; clamped to at most :data:`MAX_AVG_LOGP`.
    """
    x = x.clamp(max=MAX_AVG_LOGP)
    near_zero = x > -_LN2
    x_near = torch.where(near_zero, x, torch.full_like(x, -_LN2))
    x_far = torch.where(near_zero, torch.full_like(x, -1.0), x)
    return torch.where(near_zero, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


class _SelectiveLogSoftmax(torch.autograd.Function):
    """log_softmax(logits)[i, index[i]] computed in float32 chunks.

    Saves only the (already materialised) logits and one float32 logsumexp per row, instead of
    the full float32 log-softmax copy autograd would otherwise keep for bf16/fp16 logits.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        n = logits.shape[0]
        step = rows_per_chunk(logits.shape[-1], logits.device)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        lse = torch.empty(n, dtype=dtype, device=logits.device)
        picked = torch.empty(n, dtype=dtype, device=logits.device)
        for start in range(0, n, step):
            chunk = logits[start : start + step].to(dtype)
            lse[start : start + step] = torch.logsumexp(chunk, dim=-1)
            picked[start : start + step] = chunk.gather(1, index[start : start + step, None]).squeeze(1)
        ctx.save_for_backward(logits, index, lse)
        return picked - lse

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, index, lse = ctx.saved_tensors
        n = logits.shape[0]
        step = rows_per_chunk(logits.shape[-1], logits.device)
        grad = torch.empty_like(logits)
        grad_out = grad_out.to(lse.dtype)
        for start in range(0, n, step):
            stop = start + step
            g = grad_out[start:stop, None]
            probs = torch.exp(logits[start:stop].to(lse.dtype) - lse[start:stop, None])
            chunk_grad = -g * probs
            chunk_grad.scatter_add_(1, index[start:stop, None], g)
            grad[start:stop] = chunk_grad.to(grad.dtype)
        return grad, None


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits, -1).gather(-1, index)`` in at least float32, memory-lean.

    Args:
        logits: ``[..., V]``, any float dtype.
        index: the token to score at each position, shaped like ``logits`` without its last dimension.

    Returns:
        The log-probs of ``index``, shaped like ``index``, in at least float32.
    """
    shape = index.shape
    flat = logits.reshape(-1, logits.shape[-1])
    out = _SelectiveLogSoftmax.apply(flat, index.reshape(-1).long())
    return out.reshape(shape)


def token_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, shift: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of ``labels`` and the mask of scored tokens.

    ``labels`` follow the Hugging Face convention (aligned with ``input_ids``); with ``shift``
    the logits at position t score the label at t+1.  Only scored positions go through the
    softmax.  Returns ``(logps, mask)``, both shaped like the (shifted) labels, logps float32
    and exactly 0 where the mask is False.

    Args:
        logits: ``[..., L, V]``.
        labels: ``[..., L]`` token ids, ``ignore_index`` where nothing is scored.
        ignore_index: the label of unscored positions.
        shift: whether logits at t score the label at t+1 (causal LMs); False when they are aligned.
    """
    if shift:
        logits = logits[..., :-1, :]
        labels = labels[..., 1:]
    mask = labels != ignore_index
    logps = torch.zeros(labels.shape, dtype=torch.promote_types(logits.dtype, torch.float32), device=logits.device)
    if mask.any():
        logps = logps.masked_scatter(mask, selective_log_softmax(logits[mask], labels[mask]))
    return logps, mask


class SequenceLogps(NamedTuple):
    """Per-sequence log-probability of the scored tokens.

    Attributes:
        sum: summed log-prob of each sequence's scored tokens, float32 ``[batch]``.
        count: scored tokens per sequence, int64 ``[batch]`` (shadows ``tuple.count``).
        mean: ``sum / count``, the average per-token log-prob; 0 where ``count == 0`` (see ``valid``).
    """

    sum: torch.Tensor  # float32 [batch]
    count: torch.Tensor  # type: ignore[assignment]  # int64 [batch]: scored tokens (shadows tuple.count)
    mean: torch.Tensor  # float32 [batch]: sum / count, 0 where count == 0 (see ``valid``)

    @property
    def valid(self) -> torch.Tensor:
        """Bool ``[batch]``: the sequence has at least one scored token (its ``mean`` means something)."""
        return self.count > 0


def _reduce(logps: torch.Tensor, mask: torch.Tensor) -> SequenceLogps:
    total = logps.sum(-1)
    count = mask.sum(-1)
    return SequenceLogps(total, count, total / count.clamp(min=1))


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, shift: bool = True
) -> SequenceLogps:
    """Sum, count and average log-prob of the labelled tokens of each sequence.

    An empty completion (count 0) gets mean 0 instead of 0/0; callers exclude it via ``valid``.

    Args:
        logits: ``[batch, L, V]``.
        labels: ``[batch, L]`` token ids, ``ignore_index`` outside the completion.
        ignore_index: the label of unscored positions.
        shift: whether logits at t score the label at t+1 (see :func:`token_logps`).
    """
    return _reduce(*token_logps(logits, labels, ignore_index, shift))


class PairCounts(NamedTuple):
    """The normalisers of one batch: what the loss divides by, summed over a whole accumulation window.

    Attributes:
        nll_tokens: int64 0-d, the NLL tokens of the valid pairs.
        pairs: int64 0-d, the valid pairs.
    """

    nll_tokens: torch.Tensor  # int64 0-d: NLL tokens of the valid pairs
    pairs: torch.Tensor  # int64 0-d: valid pairs


class PairLogps(NamedTuple):
    """A batch's token scores reduced to the quantities of the ORPO loss and its metrics.

    Rows of the batch are chosen 0..B-1, then rejected B..2B-1.  A pair is valid when both
    completions have a token; an invalid pair takes part in nothing (loss, NLL, counts).

    Attributes:
        chosen: the chosen completions' sequence log-probs, ``[B]``.
        rejected: the rejected completions' sequence log-probs, ``[B]``.
        completion_mask: bool ``[2B, L-1]``, the completion tokens (the odds-ratio term's).
        nll_mask: bool ``[B, L-1]``, the NLL tokens of the valid pairs.
        nll_logp_sum: 0-d, the summed log-prob of the ``nll_mask`` tokens.
        valid: bool ``[B]``, pairs whose two completions both have a token.
    """

    chosen: SequenceLogps  # [B]
    rejected: SequenceLogps  # [B]
    completion_mask: torch.Tensor  # bool [2B, L-1]: completion tokens (the odds-ratio term's)
    nll_mask: torch.Tensor  # bool [B, L-1]: the NLL tokens of the valid pairs
    nll_logp_sum: torch.Tensor  # 0-d: summed log-prob of those tokens
    valid: torch.Tensor  # bool [B]

    @property
    def counts(self) -> PairCounts:
        """This batch's own normalisers (what :func:`pair_counts` gives from its labels)."""
        return PairCounts(self.nll_mask.sum(), self.valid.sum())


class _PairMasks(NamedTuple):
    completion: torch.Tensor
    valid: torch.Tensor
    nll: torch.Tensor


def _pair_masks(labels: torch.Tensor, nll_labels: torch.Tensor | None, ignore_index: int) -> _PairMasks:
    """The masks behind both :func:`pair_logps` and :func:`pair_counts`, so the two never disagree."""
    if labels.dim() != 2 or labels.shape[0] % 2:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)}: a batch holds 2B rows, chosen 0..B-1 then rejected B..2B-1"
        )
    pairs = labels.shape[0] // 2
    completion = labels[:, 1:] != ignore_index
    per_row = completion.sum(-1)
    valid = (per_row[:pairs] > 0) & (per_row[pairs:] > 0)
    nll = completion[:pairs] if nll_labels is None else nll_labels[:pairs, 1:] != ignore_index
    return _PairMasks(completion, valid, nll & valid[:, None])


def pair_counts(labels: torch.Tensor, nll_labels: torch.Tensor | None = None, ignore_index: int = -100) -> PairCounts:
    """NLL tokens and valid pairs of a batch, from its labels alone (no model run).

    Args:
        labels: ``[2B, L]`` completion labels, chosen rows 0..B-1 then rejected B..2B-1.
        nll_labels: ``[2B, L]`` labels of the NLL tokens (``nll_scope="prompt_and_completion"``);
            None: the chosen completions.
        ignore_index: the label of unscored positions.

    Raises:
        ValueError: ``labels`` is not 2-D with an even number of rows.
    """
    masks = _pair_masks(labels, nll_labels, ignore_index)
    return PairCounts(masks.nll.sum(), masks.valid.sum())


def pair_logps(
    token_logps: torch.Tensor,
    labels: torch.Tensor,
    nll_labels: torch.Tensor | None = None,
    ignore_index: int = -100,
) -> PairLogps:
    """Per-token log-probs of a batch -> chosen and rejected sequence log-probs, the NLL sum and
    mask, and the valid pairs.

    ``token_logps`` is ``[2B, L-1]`` in the shifted convention of :func:`token_logps` (position t
    scores ``labels[:, t+1]``) and covers every position that ``labels`` or ``nll_labels``
    label (as :class:`orpo.scoring.logps.TokenScores` does).  Sequence log-probs use the ``labels``
    tokens (the completions); the NLL uses the chosen rows' ``nll_labels`` tokens when given
    (``nll_scope="prompt_and_completion"``), else their completion tokens.

    Args:
        token_logps: per-token log-probs, ``[2B, L-1]``, shifted; finite (e.g. 0) at unscored positions.
        labels: ``[2B, L]`` completion labels, chosen rows 0..B-1 then rejected B..2B-1.
        nll_labels: ``[2B, L]`` labels of the NLL tokens; None: the chosen completions.
        ignore_index: the label of unscored positions.

    Raises:
        ValueError: ``labels`` is not 2-D with an even number of rows, or ``token_logps`` is not
            ``[2B, L-1]``.
    """
    masks = _pair_masks(labels, nll_labels, ignore_index)
    if token_logps.shape != masks.completion.shape:
        raise ValueError(
            f"token log-probs of shape {tuple(token_logps.shape)} do not match labels of shape "
            f"{tuple(labels.shape)} (expected {tuple(masks.completion.shape)}: one per shifted position)"
        )
    pairs = labels.shape[0] // 2
    per_seq = _reduce(token_logps * masks.completion, masks.completion)
    return PairLogps(
        chosen=SequenceLogps(*(t[:pairs] for t in per_seq)),
        rejected=SequenceLogps(*(t[pairs:] for t in per_seq)),
        completion_mask=masks.completion,
        nll_mask=masks.nll,
        nll_logp_sum=(token_logps[:pairs] * masks.nll).sum(),
        valid=masks.valid,
    )


class OddsRatioOutput(NamedTuple):
    """Per-pair terms of the odds-ratio part of ORPO; invalid pairs hold zeros.

    Attributes:
        losses: ``-beta * logsigmoid(log_odds)``, what is minimised, ``>= 0``.
        log_odds: ``log odds(chosen) - log odds(rejected)`` (TRL's ``log_odds_chosen``).
        log_sigmoid_odds: ``logsigmoid(log_odds)`` (TRL's ``log_odds_ratio``).
        chosen_rewards: ``beta * avg logp(chosen)``, detached.
        rejected_rewards: ``beta * avg logp(rejected)``, detached.
        valid: bool, the pair takes part (both completions non-empty).
    """

    losses: torch.Tensor  # -beta * logsigmoid(log_odds): what is minimised, >= 0
    log_odds: torch.Tensor  # log odds(chosen) - log odds(rejected)  (TRL: log_odds_chosen)
    log_sigmoid_odds: torch.Tensor  # logsigmoid(log_odds)  (TRL: log_odds_ratio)
    chosen_rewards: torch.Tensor  # beta * avg logp(chosen)
    rejected_rewards: torch.Tensor  # beta * avg logp(rejected)
    valid: torch.Tensor  # bool: pair takes part (both completions non-empty)


def odds_ratio_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    beta: float,
    valid: torch.Tensor | None = None,
) -> OddsRatioOutput:
    """ORPO's odds-ratio term for average log-probs of chosen and rejected completions.

    Computed in at least float32 whatever the input dtype (bf16 has 3 significant digits,
    not enough for log(1 - p) near p = 1).  Pairs with ``valid == False`` contribute exactly
    zero loss and zero gradient.

    Args:
        chosen_logps: average per-token log-probs of the chosen completions, shape ``[B]``.
        rejected_logps: average per-token log-probs of the rejected completions, shape ``[B]``.
        beta: weight of the odds-ratio term (lambda in the ORPO paper).
        valid: bool ``[B]``, the pairs that take part; None: all of them.
    """
    dtype = torch.promote_types(chosen_logps.dtype, torch.float32)
    lp_c = chosen_logps.to(dtype)
    lp_r = rejected_logps.to(dtype)
    if valid is None:
        valid = torch.ones_like(lp_c, dtype=torch.bool)
    # Invalid pairs get a harmless stand-in so nothing non-finite enters the graph.
    stand_in = torch.full_like(lp_c, -1.0)
    lp_c_safe = torch.where(valid, lp_c, stand_in).clamp(MIN_AVG_LOGP, MAX_AVG_LOGP)
    lp_r_safe = torch.where(valid, lp_r, stand_in).clamp(MIN_AVG_LOGP, MAX_AVG_LOGP)
    log_odds = (lp_c_safe - lp_r_safe) - (log1mexp(lp_c_safe) - log1mexp(lp_r_safe))
    log_sigmoid_odds = F.logsigmoid(log_odds)
    zero = torch.zeros_like(log_odds)
    return OddsRatioOutput(
        losses=torch.where(valid, -beta * log_sigmoid_odds, zero),
        log_odds=torch.where(valid, log_odds, zero),
        log_sigmoid_odds=torch.where(valid, log_sigmoid_odds, zero),
        chosen_rewards=beta * torch.where(valid, lp_c, zero).detach(),
        rejected_rewards=beta * torch.where(valid, lp_r, zero).detach(),
        valid=valid,
    )


class ORPOLossOutput(NamedTuple):
    """The ORPO loss of a batch and its parts.

    Attributes:
        loss: ``nll_loss + or_loss``, the scalar to backpropagate.
        nll_loss: the token-averaged NLL of the NLL tokens.
        or_loss: the pair-averaged ``-beta * logsigmoid(log_odds)``.
        odds: the per-pair terms behind ``or_loss``.
    """

    loss: torch.Tensor  # nll_loss + or_loss: the scalar to backpropagate
    nll_loss: torch.Tensor  # token-averaged NLL of the NLL tokens
    or_loss: torch.Tensor  # pair-averaged -beta * logsigmoid(log_odds)
    odds: OddsRatioOutput


def orpo_loss(
    chosen: SequenceLogps,
    rejected: SequenceLogps,
    beta: float,
    nll_logp_sum: torch.Tensor | None = None,
    nll_token_count: torch.Tensor | float | None = None,
    pair_count: torch.Tensor | float | None = None,
) -> ORPOLossOutput:
    """Full ORPO loss for one batch.

    ``nll_logp_sum`` is the summed log-prob of the tokens the NLL covers (default: the chosen
    completion tokens).  ``nll_token_count`` and ``pair_count`` are the normalisers; pass the
    totals of a whole gradient-accumulation window (across processes) to make micro-batching
    invisible, or leave them None to normalise by this batch.

    Args:
        chosen: the chosen completions' sequence log-probs, ``[B]``.
        rejected: the rejected completions' sequence log-probs, ``[B]``.
        beta: weight of the odds-ratio term (lambda in the ORPO paper).
        nll_logp_sum: 0-d summed log-prob of the NLL tokens; None: the valid pairs' chosen completions.
        nll_token_count: the NLL's divisor (tokens); None: this batch's, allowed only without ``nll_logp_sum``.
        pair_count: the odds-ratio term's divisor (valid pairs); None: this batch's.

    Raises:
        ValueError: ``nll_logp_sum`` is given without ``nll_token_count``.
    """
    valid = chosen.valid & rejected.valid
    odds = odds_ratio_loss(chosen.mean, rejected.mean, beta, valid)
    if nll_logp_sum is None:
        nll_logp_sum = torch.where(valid, chosen.sum, torch.zeros_like(chosen.sum)).sum()
        local_tokens = torch.where(valid, chosen.count, torch.zeros_like(chosen.count)).sum()
    else:
        local_tokens = None
    if nll_token_count is None:
        if local_tokens is None:
            raise ValueError("nll_token_count is required when nll_logp_sum is given")
        nll_token_count = local_tokens
    if pair_count is None:
        pair_count = valid.sum()
    nll = -nll_logp_sum / torch.as_tensor(nll_token_count, device=nll_logp_sum.device).clamp(min=1)
    or_term = odds.losses.sum() / torch.as_tensor(pair_count, device=nll_logp_sum.device).clamp(min=1)
    return ORPOLossOutput(loss=nll + or_term, nll_loss=nll, or_loss=or_term, odds=odds)
