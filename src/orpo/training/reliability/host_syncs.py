"""Detecting host syncs: calls that make the host wait for the device.

On an accelerator these calls wait for the device (a value read back, a data-dependent shape),
so a training step that makes them stalls the GPU's queue.  On CPU nothing waits, but the calls
are the same: detecting them there proves a step free of them wherever it runs.  For tests.

The detector is a ``TorchFunctionMode``: it sees every torch call made from Python while it is
active and changes nothing in torch (patching ``torch.Tensor`` itself would leave CPython's type
slots altered).  Syncs inside C++ are not seen; on a GPU, ``torch.cuda.set_sync_debug_mode``
catches those.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

Tensor = torch.Tensor
_TORCH = os.path.dirname(torch.__file__)  # a sync is named by its first caller outside torch


def _mask_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, Tensor) and i.dtype in (torch.bool, torch.uint8) for i in items)


def _mask_read(args: tuple, _kwargs: dict) -> bool:
    return _mask_index(args[1])


def _mask_write(args: tuple, _kwargs: dict) -> bool:
    # a scalar through a mask is a masked_fill (no sync); a tensor of values needs the mask's nonzero
    return _mask_index(args[1]) and isinstance(args[2], Tensor) and args[2].numel() != 1


def _unsized_repeat(args: tuple, kwargs: dict) -> bool:
    repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
    return isinstance(repeats, Tensor) and kwargs.get("output_size") is None


def _always(_args: tuple, _kwargs: dict) -> bool:
    return True


def _nonzero_where(args: tuple, kwargs: dict) -> bool:
    return len(args) + len(kwargs) == 1  # torch.where(condition) is nonzero


def _unsized_bincount(args: tuple, kwargs: dict) -> bool:
    return kwargs.get("minlength", args[2] if len(args) > 2 else 0) == 0  # the length is max(input) + 1


def _to_host(args: tuple, kwargs: dict) -> bool:
    """``.to("cpu")`` waits for the device (``non_blocking=True`` does not: the copy is read later).  Spelled
    ``"cpu"``, or a device off the tensor's own: ``.to(tensor.device)`` in code run on CPU is not a move."""
    if kwargs.get("non_blocking") or any(a is True for a in args[1:]):
        return False
    target = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device))), None))
    if isinstance(target, str):
        return torch.device(target).type == "cpu"
    return isinstance(target, torch.device) and target.type == "cpu" != args[0].device.type


#: torch functions and Tensor methods that read values back to the host or whose output shape
#: depends on values -> (label, condition on the call's arguments)
SYNCS: dict[Callable[..., Any], tuple[str, Callable[[tuple, dict], bool]]] = {
    **{
        getattr(Tensor, name): (f"Tensor.{name}", _always)
        for name in ("item", "tolist", "nonzero", "numpy", "cpu", "masked_select", "unique", "unique_consecutive")
    },
    **{
        getattr(Tensor, name): (f"Tensor.{name}", _always)
        for name in (
            "__bool__",
            "__int__",
            "__float__",
            "__complex__",
            "__index__",
            "__format__",
            "__repr__",
            "__contains__",
            "__array__",
        )
    },
    **{getattr(torch, name): (f"torch.{name}", _always) for name in ("nonzero", "argwhere", "equal", "allclose")},
    **{
        getattr(torch, name): (f"torch.{name}", _always)
        for name in ("is_nonzero", "masked_select", "unique", "unique_consecutive")
    },
    torch.where: ("torch.where(condition)", _nonzero_where),
    torch.bincount: ("torch.bincount", _unsized_bincount),
    Tensor.bincount: ("Tensor.bincount", _unsized_bincount),
    Tensor.to: ("Tensor.to(cpu)", _to_host),
    Tensor.__getitem__: ("boolean-mask indexing", _mask_read),
    Tensor.__setitem__: ("boolean-mask assignment", _mask_write),
    Tensor.repeat_interleave: ("Tensor.repeat_interleave", _unsized_repeat),
    torch.repeat_interleave: ("torch.repeat_interleave", _unsized_repeat),
}


class HostSyncError(AssertionError):
    """A host sync ran where :func:`detect_host_syncs` forbids them."""


class HostSyncs(TorchFunctionMode):
    """What :func:`detect_host_syncs` saw: one ``"name at file:line"`` per call.

    Args:
        raise_on_sync: raise :class:`HostSyncError` at the first sync counted.
        within: a folder or file (or several): only syncs whose first caller outside torch is there count.
    """

    def __init__(self, raise_on_sync: bool, within: str | tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.raise_on_sync = raise_on_sync
        self.within = within
        self.events: list[str] = []
        #: syncs named by a caller outside ``within`` (e.g. transformers' own): kept, never raised on
        self.outside: list[str] = []

    def record(self, label: str) -> None:
        """Note one sync, named by its first caller outside torch (and raise, if asked to).

        Args:
            label: what synced (``"Tensor.item"``...).

        Raises:
            HostSyncError: ``raise_on_sync`` and the sync counts.
        """
        frames = reversed(traceback.extract_stack()[:-1])
        frame = next((f for f in frames if f.filename != __file__ and not f.filename.startswith(_TORCH)), None)
        event = f"{label} at {frame.filename}:{frame.lineno}" if frame else label
        if self.within is not None and (frame is None or not frame.filename.startswith(self.within)):
            self.outside.append(event)
            return
        self.events.append(event)
        if self.raise_on_sync:
            raise HostSyncError(f"host sync: {event}")

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        sync = SYNCS.get(func)
        if sync is not None and sync[1](args, kwargs):
            self.record(sync[0])
        return func(*args, **kwargs)


@contextmanager
def detect_host_syncs(raise_on_sync: bool = True, within: str | tuple[str, ...] | None = None) -> Iterator[HostSyncs]:
    """Within the block, record (or raise :class:`HostSyncError` on) every host sync made from
    Python: value reads (``.item()``, ``.tolist()``, ``bool(t)``, ``int(t)``, formatting...),
    ``nonzero``-like ops (``torch.where(condition)`` included), boolean-mask indexing and assignment of
    tensors, ``repeat_interleave`` and ``bincount`` without a size, ``.to("cpu")`` and
    ``torch.cuda.synchronize``.  With ``within`` (a folder or file, e.g. orpo's package, or a tuple of them), only syncs whose first
    caller outside torch lies there count; the others are kept in ``outside``.

    Args:
        raise_on_sync: raise at the first sync counted; False: only record them in ``events``.
        within: the folders or files whose syncs count; None: all.
    """
    syncs = HostSyncs(raise_on_sync, within)
    synchronize = torch.cuda.synchronize

    def counted_synchronize(*args: Any, **kwargs: Any) -> None:
        syncs.record("torch.cuda.synchronize")
        synchronize(*args, **kwargs)

    torch.cuda.synchronize = counted_synchronize
    try:
        with syncs:
            yield syncs
    finally:
        torch.cuda.synchronize = synchronize


class DeferredRead:
    """A few device values copied to the host without waiting, to be read a step later.

    Created where the values are computed (the copy is queued behind them, with an event on
    CUDA); :meth:`values` waits on that event only, which a step later has long completed, so the
    host never waits for the work queued since.  Where no asynchronous copy exists (CPU, where
    nothing waits; other devices, where it is a plain copy) the values are taken as they are.
    The one read of values from Python that :func:`detect_host_syncs` does not count, because it is
    not a wait: tests check it stays out of the step that computes the values.

    Args:
        values: the device values to copy (detached).
    """

    def __init__(self, values: Tensor) -> None:
        values = values.detach()
        self._event: Any = None
        if values.device.type == "cuda":
            self._host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self._host.copy_(values, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        elif values.device.type == "cpu":
            self._host = values.clone()  # later in-place changes to ``values`` must not show
        else:
            self._host = values.to("cpu", non_blocking=False)

    def values(self) -> list[float]:
        """The values as Python floats (flattened)."""
        if self._event is not None:
            self._event.synchronize()
        with torch._C.DisableTorchFunction():  # a completed host copy: reading it waits for nothing
            return [float(v) for v in self._host.flatten().tolist()]
