"""Log-probs of target tokens straight from hidden states, chunked through the LM head.

Full-vocabulary logits are never held: each chunk of rows is projected, reduced to its
logsumexp and target logit, and dropped; backward recomputes the chunk.  Gradients are exact
(same math as ``log_softmax(h @ W.T + b)``), in float32 accumulation.
"""

from __future__ import annotations

import torch

# Float32 elements of one chunk of logits: ~256 MiB whatever the vocabulary size.
CHUNK_ELEMENTS = 1 << 26


def _project(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: float | None) -> torch.Tensor:
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    logits = hidden.to(dtype) @ weight.to(dtype).T
    if bias is not None:
        logits = logits + bias.to(dtype)
    logits = logits.float()
    return logits * scale if scale is not None else logits


class _LinearSelectiveLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, index, softcap, scale, chunk_rows):  # type: ignore[override]
        n = hidden.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        picked = torch.empty(n, dtype=torch.float32, device=hidden.device)
        means = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_rows):
            stop = start + chunk_rows
            logits = _project(hidden[start:stop], weight, bias, scale)
            if softcap is not None:
                logits = softcap * torch.tanh(logits / softcap)
            lse[start:stop] = torch.logsumexp(logits, dim=-1)
            picked[start:stop] = logits.gather(1, index[start:stop, None]).squeeze(1)
            means[start:stop] = logits.mean(-1)
        ctx.save_for_backward(hidden, weight, bias, index, lse)
        ctx.softcap, ctx.scale, ctx.chunk_rows = softcap, scale, chunk_rows
        ctx.mark_non_differentiable(means)
        return picked - lse, means

    @staticmethod
    def backward(ctx, grad_logps, _grad_means):  # type: ignore[override]
        hidden, weight, bias, index, lse = ctx.saved_tensors
        softcap, scale, chunk_rows = ctx.softcap, ctx.scale, ctx.chunk_rows
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        grad_logps = grad_logps.float()
        for start in range(0, hidden.shape[0], chunk_rows):
            stop = start + chunk_rows
            h = hidden[start:stop]
            logits = _project(h, weight, bias, scale)
            if softcap is not None:
                capped = torch.tanh(logits / softcap)
                logits = softcap * capped
            g = grad_logps[start:stop, None]
            dz = -g * torch.exp(logits - lse[start:stop, None])
            dz.scatter_add_(1, index[start:stop, None], g)
            if softcap is not None:
                dz = dz * (1 - capped * capped)
            if scale is not None:
                dz = dz * scale
            if need_b:
                grad_b += dz.sum(0)
            if need_h:
                grad_h[start:stop] = (dz.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w += dz.T @ h.float()
        return (
            grad_h,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
            None,
            None,
            None,
            None,
        )


def linear_selective_log_softmax(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    index: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    scale: float | None = None,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log_softmax(cap(scale * (hidden @ weight.T + bias)))[i, index[i]]`` and the mean logit per row.

    ``hidden`` is [N, H] (only the rows that carry a loss), ``weight`` [V, H].  Returns float32
    log-probs (differentiable w.r.t. hidden, weight, bias) and detached float32 mean logits.
    """
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
    return _LinearSelectiveLogSoftmax.apply(hidden, weight, bias, index.long(), softcap, scale, chunk_rows)
