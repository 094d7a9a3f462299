"""Detecting host syncs: calls that make the host wait for the device.

On an accelerator these calls wait for the device (a value read back, a data-dependent shape),
so a training step that makes them stalls the GPU's queue.  On CPU nothing waits, but the calls
are the same: detecting them there proves a step free of them wherever it runs.  For tests;
on a GPU, ``torch.cuda.set_sync_debug_mode("error")`` also catches syncs made inside C++.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

#: Tensor methods that read values back to the host.
SYNC_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy", "cpu")
#: torch functions that do, or whose output shape depends on values.
SYNC_FUNCTIONS = ("nonzero", "argwhere", "equal", "allclose", "is_nonzero", "masked_select", "unique")


class HostSyncError(AssertionError):
    """A host sync ran where :func:`detect_host_syncs` forbids them."""


class HostSyncs:
    """What :func:`detect_host_syncs` saw: one ``"name at file:line"`` per call."""

    def __init__(self, raise_on_sync: bool) -> None:
        self.raise_on_sync = raise_on_sync
        self.events: list[str] = []
        self._depth = 0

    def record(self, name: str) -> None:
        import traceback

        frame = traceback.extract_stack()[-3]  # the caller of the patched method
        event = f"{name} at {frame.filename}:{frame.lineno}"
        self.events.append(event)
        if self.raise_on_sync:
            raise HostSyncError(f"host sync: {event}")


def _is_mask_index(index: object) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in items)


def _mask_assignment(_tensor: object, index: object, value: object) -> bool:
    # a scalar through a mask is a masked_fill (no sync); a tensor of values needs the mask's nonzero
    return _is_mask_index(index) and isinstance(value, torch.Tensor) and value.numel() != 1


def _unsized_repeat(_input: object, repeats: object = None, *args: object, **kwargs: object) -> bool:
    return isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None


@contextmanager
def detect_host_syncs(raise_on_sync: bool = True) -> Iterator[HostSyncs]:
    """Within the block, record (or raise :class:`HostSyncError` on) every host sync made from
    Python: value reads (``.item()``, ``.tolist()``, ``bool(t)``, ``int(t)``...), ``nonzero``-like
    ops, boolean-mask indexing and assignment of tensors, ``repeat_interleave`` without
    ``output_size`` and ``torch.cuda.synchronize``.

    Syncs inside C++ (none in ordinary forward/backward kernels) are not seen.
    """
    syncs = HostSyncs(raise_on_sync)
    saved: list[tuple[object, str, object, bool]] = []

    def wrap(owner: object, name: str, label: str, when: Callable[..., bool] | None = None) -> None:
        original = getattr(owner, name)

        def patched(*args: object, **kwargs: object) -> object:
            if syncs._depth == 0 and (when is None or when(*args, **kwargs)):
                syncs.record(label)
            syncs._depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                syncs._depth -= 1

        saved.append((owner, name, original, name in vars(owner)))
        setattr(owner, name, patched)

    for name in SYNC_METHODS:
        wrap(torch.Tensor, name, f"Tensor.{name}")
    for name in SYNC_FUNCTIONS:
        wrap(torch, name, f"torch.{name}")
    wrap(torch.Tensor, "__getitem__", "boolean-mask indexing", lambda _t, index: _is_mask_index(index))
    wrap(torch.Tensor, "__setitem__", "boolean-mask assignment", _mask_assignment)
    wrap(torch.Tensor, "repeat_interleave", "Tensor.repeat_interleave", _unsized_repeat)
    wrap(torch, "repeat_interleave", "torch.repeat_interleave", _unsized_repeat)
    wrap(torch.cuda, "synchronize", "torch.cuda.synchronize")
    try:
        yield syncs
    finally:
        for owner, name, original, own in reversed(saved):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
