"""Log-probs of target tokens straight from hidden states, chunked through the LM head.

Full-vocabulary logits are never held: each chunk of rows is projected, reduced to its
logsumexp and target logit, and dropped; backward recomputes the chunk once.  Gradients are exact
(same math as ``log_softmax(h @ W.T + b)``): the matmuls take the dtype forward's logits matmul
took (bf16 under autocast or for bf16 weights), the logit gradient is formed in float32 (float64
for float64 inputs), and the weight gradient accumulates in place in one float32 buffer.
"""

from __future__ import annotations

from typing import Any

import torch

from orpo.loss import CHUNK_ELEMENTS

#: The head's chunks on CPU: ~16 MiB of float32 logits, and never fewer than 128 rows: each chunk
#: reads the whole weight, so a few dozen rows per chunk leave the matmuls bound by memory
#: (measured: 65-row chunks 1.24x slower than 128-256 rows, 512+ rows slower again).
CPU_HEAD_CHUNK_ELEMENTS = 1 << 22
CPU_HEAD_MIN_ROWS = 128


def head_chunk_rows(device: torch.device, vocab_size: int) -> int:
    """Rows of hidden states per chunk of the fused head.

    Args:
        device: where the hidden states live; CPU chunks are smaller but at least :data:`CPU_HEAD_MIN_ROWS` rows.
        vocab_size: the head's output size (logits per row).
    """
    if device.type != "cpu":
        return max(1, CHUNK_ELEMENTS // vocab_size)
    return max(CPU_HEAD_MIN_ROWS, CPU_HEAD_CHUNK_ELEMENTS // vocab_size)


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
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        compute = _compute_dtype(hidden, weight, *ctx.autocast)
        accum = lse.dtype
        # One copy of the weight in the matmul dtype (bf16 under autocast), not one per chunk.
        weight_c = weight.detach().to(compute)
        bias_dtype = torch.promote_types(hidden.dtype, weight.dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=accum, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=accum, device=weight.device) if need_b else None
        grad_logps = grad_logps.to(accum)
        for start in range(0, hidden.shape[0], ctx.chunk_rows):
            stop = start + ctx.chunk_rows
            h = hidden[start:stop].detach().to(compute)
            dz = _logit_gradient(
                ctx, h, weight_c, bias, bias_dtype, lse[start:stop], index[start:stop], grad_logps[start:stop]
            )
            if grad_b is not None:
                grad_b += dz.sum(0)
            dz = dz.to(compute)
            if grad_h is not None:
                _matmul_into(grad_h[start:stop], dz, weight_c)
            if grad_w is not None:
                _accumulate_matmul(grad_w, dz.T, h)
        return (
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None,
            None,
            None,
            None,
        )


def _compute_dtype(
    hidden: torch.Tensor, weight: torch.Tensor, device_type: str, autocast_on: bool, autocast_dtype: torch.dtype
) -> torch.dtype:
    """The dtype forward's logits matmul ran in: autocast's for non-float64 inputs, else the inputs'."""
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    return autocast_dtype if autocast_on and dtype != torch.float64 else dtype


def _logit_gradient(ctx, h, weight_c, bias, bias_dtype, lse, index, grad) -> torch.Tensor:
    """d(sum grad * logp)/d(logits) of one chunk, in the accumulation dtype: the logits are
    recomputed as forward computed them, then turned into the gradient in place."""
    logits = torch.mm(h, weight_c.T)
    if bias is not None:
        logits = logits + bias.detach().to(bias_dtype)
    logits = logits.to(lse.dtype)
    if ctx.scale is not None:
        logits = logits * ctx.scale
    capped = None
    if ctx.softcap is not None:
        capped = torch.tanh(logits / ctx.softcap)
        logits = capped * ctx.softcap
    g = grad[:, None]
    dz = logits.sub_(lse[:, None]).exp_().mul_(-g)
    dz.scatter_add_(1, index[:, None], g)
    if capped is not None:
        dz.mul_(1 - capped * capped)
    if ctx.scale is not None:
        dz.mul_(ctx.scale)
    return dz


def _matmul_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    if out.dtype == a.dtype and out.is_contiguous():
        torch.mm(a, b, out=out)
    else:
        out.copy_(a @ b)


#: Per device type: whether ``addmm(..., out_dtype=float32)`` takes bf16/fp16 operands (CUDA does).
_OUT_DTYPE_MATMUL: dict[str, bool] = {}


def _has_out_dtype_matmul(acc: torch.Tensor, operand_dtype: torch.dtype) -> bool:
    device = acc.device.type
    if device not in _OUT_DTYPE_MATMUL:
        probe = torch.zeros((1, 1), dtype=acc.dtype, device=acc.device)
        one = torch.ones((1, 1), dtype=operand_dtype, device=acc.device)
        try:
            torch.addmm(probe, one, one, out_dtype=acc.dtype, out=probe)
            _OUT_DTYPE_MATMUL[device] = True
        except (RuntimeError, NotImplementedError, TypeError):
            _OUT_DTYPE_MATMUL[device] = False
    return _OUT_DTYPE_MATMUL[device]


def _accumulate_matmul(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` in place: float32 accumulation straight from bf16 operands where the
    device has it (CUDA), else one activation-dtype product per chunk added to the accumulator."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif _has_out_dtype_matmul(acc, a.dtype):
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    else:
        acc.add_(a @ b)


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

    Args:
        hidden: ``[N, H]`` final hidden states of the scored positions.
        weight: ``[V, H]`` the LM head's weight.
        index: ``[N]`` the target token of each row.
        bias: ``[V]`` the head's bias, if it has one.
        softcap: ``cap(z) = softcap * tanh(z / softcap)`` (the config's ``final_logit_softcapping``); None: no cap.
        scale: multiplies the logits before the cap (the config's ``logit_scale``); None: 1.
        chunk_rows: rows per chunk; None: :func:`head_chunk_rows`.

    Returns:
        ``(logps, mean_logits)``, each ``[N]``.
    """
    if chunk_rows is None:
        chunk_rows = head_chunk_rows(hidden.device, weight.shape[0])
    return _LinearSelectiveLogSoftmax.apply(hidden, weight, bias, index.long(), softcap, scale, chunk_rows)


class HeadCapture:
    """A forward pre-hook installed once on an LM head: while armed, it keeps the head's input
    (the final hidden states) and lets the head run on one position only.

    One persistent hook, installed before the model's first forward: torch.compile
    (``torch_compile``) does not guard on a module's hooks, so a hook added or removed per call
    would be missed by an already compiled model.  It does guard on ``armed``, so a compiled
    model keeps one graph for scoring and one for ordinary calls, with no graph break.

    Attributes:
        armed: whether the next head call is captured (set by the caller around one forward).
        hidden: the captured head input, ``[..., L, H]``; None when nothing was captured.
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
        """The capture installed on ``head``, installing it on first use (one hook per head, ever).

        Args:
            head: the model's LM head (its output embeddings).
        """
        capture = head.__dict__.get("_orpo_head_capture")
        if capture is None:
            capture = cls()
            head.register_forward_pre_hook(capture)
            head.__dict__["_orpo_head_capture"] = capture
        return capture
