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


#: torch functions and Tensor methods that read values back to the host or whose output shape
#: depends on values -> (label, condition on the call's arguments)
SYNCS: dict[Callable[..., Any], tuple[str, Callable[[tuple, dict], bool]]] = {
    **{getattr(Tensor, name): (f"Tensor.{name}", _always) for name in ("item", "tolist", "nonzero", "numpy", "cpu")},
    **{
        getattr(Tensor, name): (f"Tensor.{name}", _always) for name in ("__bool__", "__int__", "__float__", "__index__")
    },
    **{getattr(torch, name): (f"torch.{name}", _always) for name in ("nonzero", "argwhere", "equal", "allclose")},
    **{getattr(torch, name): (f"torch.{name}", _always) for name in ("is_nonzero", "masked_select", "unique")},
    Tensor.masked_select: ("Tensor.masked_select", _always),
    Tensor.__getitem__: ("boolean-mask indexing", _mask_read),
    Tensor.__setitem__: ("boolean-mask assignment", _mask_write),
    Tensor.repeat_interleave: ("Tensor.repeat_interleave", _unsized_repeat),
    torch.repeat_interleave: ("torch.repeat_interleave", _unsized_repeat),
}


class HostSyncError(AssertionError):
    """A host sync ran where :func:`detect_host_syncs` forbids them."""


class HostSyncs(TorchFunctionMode):
    """What :func:`detect_host_syncs` saw: one ``"name at file:line"`` per call."""

    def __init__(self, raise_on_sync: bool) -> None:
        super().__init__()
        self.raise_on_sync = raise_on_sync
        self.events: list[str] = []

    def record(self, label: str) -> None:
        frames = reversed(traceback.extract_stack()[:-1])
        frame = next((f for f in frames if f.filename != __file__ and not f.filename.startswith(_TORCH)), None)
        event = f"{label} at {frame.filename}:{frame.lineno}" if frame else label
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
def detect_host_syncs(raise_on_sync: bool = True) -> Iterator[HostSyncs]:
    """Within the block, record (or raise :class:`HostSyncError` on) every host sync made from
    Python: value reads (``.item()``, ``.tolist()``, ``bool(t)``, ``int(t)``...), ``nonzero``-like
    ops, boolean-mask indexing and assignment of tensors, ``repeat_interleave`` without
    ``output_size`` and ``torch.cuda.synchronize``."""
    syncs = HostSyncs(raise_on_sync)
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
