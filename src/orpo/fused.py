"""Log-probs of target tokens straight from hidden states, chunked through the LM head.

Full-vocabulary logits are never held: each chunk of rows is projected, reduced to its
logsumexp and target logit, and dropped; backward recomputes the chunk.  Gradients are exact
(same math as ``log_softmax(h @ W.T + b)``), in float32 accumulation (float64 for float64 inputs).
:class:`HeadCapture` takes those hidden states from a model's forward pass.
"""

from __future__ import annotations

from typing import Any

import torch

# Float32 elements of one chunk of logits: ~256 MiB on GPU whatever the vocabulary size.  On CPU
# a fresh 256 MiB buffer per chunk costs more in page faults than the matmul; 8 MiB chunks are faster.
CHUNK_ELEMENTS = 1 << 26
CPU_CHUNK_ELEMENTS = 1 << 21


def rows_per_chunk(columns: int, device: torch.device) -> int:
    """Rows of ``columns`` values processed at once: the chunk size of every chunked loop in orpo."""
    budget = CHUNK_ELEMENTS if device.type != "cpu" else CPU_CHUNK_ELEMENTS
    return max(1, budget // max(columns, 1))


def _accum_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """float32, or float64 when the inputs are float64 (then the result is exact to float64)."""
    return torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)


def _project(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: float | None
) -> torch.Tensor:
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    logits = hidden.to(dtype) @ weight.to(dtype).T
    if bias is not None:
        logits = logits + bias.to(dtype)
    logits = logits.to(_accum_dtype(hidden, weight))
    return logits * scale if scale is not None else logits


class _LinearSelectiveLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, index, softcap, scale, chunk_rows):
        n = hidden.shape[0]
        dtype = _accum_dtype(hidden, weight)
        lse = torch.empty(n, dtype=dtype, device=hidden.device)
        picked = torch.empty(n, dtype=dtype, device=hidden.device)
        means = torch.empty(n, dtype=dtype, device=hidden.device)
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
        # Backward recomputes the logits; it must do so in the precision forward used (autocast is
        # off in backward by default), or exp(logits - lse) would not sum to one.
        device_type = hidden.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        ctx.mark_non_differentiable(means)
        return picked - lse, means

    @staticmethod
    def backward(ctx, grad_logps, _grad_means):
        hidden, weight, bias, index, lse = ctx.saved_tensors
        device_type, autocast_on, autocast_dtype = ctx.autocast
        softcap, scale, chunk_rows = ctx.softcap, ctx.scale, ctx.chunk_rows
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        accum = lse.dtype
        grad_w = torch.zeros(weight.shape, dtype=accum, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=accum, device=weight.device) if need_b else None
        grad_logps = grad_logps.to(accum)
        for start in range(0, hidden.shape[0], chunk_rows):
            stop = start + chunk_rows
            h = hidden[start:stop]
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_on):
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
            if grad_b is not None:
                grad_b += dz.sum(0)
            if grad_h is not None:
                grad_h[start:stop] = (dz.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_w is not None:
                grad_w += dz.T @ h.to(accum)
        return (
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
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
    log-probs (differentiable w.r.t. hidden, weight, bias) and detached float32 mean logits
    (float64 for float64 inputs).  Under autocast the logits are computed, in forward and in the
    backward recomputation alike, in the autocast dtype.
    """
    if chunk_rows is None:
        chunk_rows = rows_per_chunk(weight.shape[0], hidden.device)
    return _LinearSelectiveLogSoftmax.apply(hidden, weight, bias, index.long(), softcap, scale, chunk_rows)


class HeadCapture:
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
    def of(cls, head: torch.nn.Module) -> HeadCapture:
        capture = head.__dict__.get("_orpo_head_capture")
        if capture is None:
            capture = cls()
            head.register_forward_pre_hook(capture)
            head.__dict__["_orpo_head_capture"] = capture
        return capture
