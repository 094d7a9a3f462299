"""The host-sync detector: it sees value reads, data-dependent shapes and explicit syncs, lets
device-side work through, and leaves torch as it found it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orpo.training.reliability.host_syncs import DeferredRead, HostSyncError, detect_host_syncs

SYNCS = {
    "item": lambda x: x.sum().item(),
    "tolist": lambda x: x.tolist(),
    "bool": lambda x: bool(x.any()),
    "int": lambda x: int(x[0]),
    "float": lambda x: float(x.max()),
    "index": lambda x: range(10)[x[1].long()],
    "nonzero": lambda x: x.nonzero(),
    "torch.nonzero": lambda x: torch.nonzero(x),
    "mask read": lambda x: x[x > 1],
    "mask write of a tensor": lambda x: x.clone().__setitem__(x > 1, torch.ones(3)),
    "unique": lambda x: torch.unique(x),
    "allclose": lambda x: torch.allclose(x, x),
    "repeat_interleave by tensor": lambda x: torch.repeat_interleave(x, torch.ones(5, dtype=torch.long)),
    "cpu": lambda x: x.cpu(),
    "to cpu": lambda x: x.to("cpu"),
    "format": lambda x: f"{x.sum()}",
    "repr": lambda x: repr(x),
    "where(condition)": lambda x: torch.where(x > 1),
    "bincount unsized": lambda x: torch.bincount(x.long()),
    "unique_consecutive": lambda x: torch.unique_consecutive(x),
    "in": lambda x: 2.0 in x,
    "numpy array": lambda x: np.asarray(x),
    "cuda.synchronize": lambda x: torch.cuda.synchronize(),
}

FREE = {
    "arithmetic": lambda x: (x * 2 + 1).exp().sum(),
    "mask fill": lambda x: x.masked_fill(x > 1, 0.0),
    "scalar through a mask": lambda x: x.clone().__setitem__(x > 1, 0.0),
    "gather": lambda x: x[torch.tensor([0, 2])],
    "where": lambda x: torch.where(x > 1, x, -x),
    "shape": lambda x: x.reshape(5, 1).shape[0] + len(x),
    "repeat_interleave sized": lambda x: torch.repeat_interleave(x, torch.ones(5, dtype=torch.long), output_size=5),
    "backward": lambda x: x.clone().requires_grad_().pow(2).sum().backward(),
    "to its own device": lambda x: x.to(x.device),
    "to cpu, not waiting": lambda x: x.to("cpu", non_blocking=True),
    "bincount sized": lambda x: torch.bincount(x.long(), minlength=5),
    "a deferred read": lambda x: DeferredRead(x.sum()).values(),
}


@pytest.mark.parametrize("name", list(SYNCS))
def test_sync_raises_and_names_its_caller(name):
    x = torch.arange(5.0)  # torch.cuda.synchronize is watched too where no device exists: the call counts
    with pytest.raises(HostSyncError, match=r"host sync: .* at .*test_host_syncs\.py:\d+"), detect_host_syncs():
        SYNCS[name](x)


@pytest.mark.parametrize("name", list(FREE))
def test_device_side_work_is_not_a_sync(name):
    x = torch.arange(5.0)
    with detect_host_syncs() as syncs:
        FREE[name](x)
    assert syncs.events == []


def test_counting_mode_and_nesting():
    x = torch.arange(5.0)
    with detect_host_syncs(raise_on_sync=False) as syncs:
        x.sum().item()
        x[x > 2].tolist()  # the mask read is one sync; its tolist another
        int(x[0])
    assert [event.split(" at ")[0] for event in syncs.events] == [
        "Tensor.item",
        "boolean-mask indexing",
        "Tensor.tolist",
        "Tensor.__int__",
    ]


def test_nothing_is_left_behind():
    synchronize = torch.cuda.synchronize
    with pytest.raises(HostSyncError), detect_host_syncs():
        torch.ones(1).item()
    assert torch.cuda.synchronize is synchronize
    assert torch._C._len_torch_function_stack() == 0  # the mode is popped
    assert "__getitem__" not in vars(torch.Tensor)  # torch.Tensor itself is never patched
    assert torch.ones(3)[torch.tensor([True, False, True])].tolist() == [1.0, 1.0]
    assert torch.tensor([torch.tensor(1.0), torch.tensor(2.0)]).tolist() == [1.0, 2.0]


def test_within_counts_only_the_named_code():
    x = torch.arange(5.0)
    with detect_host_syncs(within="/nowhere/") as syncs:  # raises only on syncs made there
        x.sum().item()
    assert syncs.events == [] and [e.split(" at ")[0] for e in syncs.outside] == ["Tensor.item"]
    with pytest.raises(HostSyncError), detect_host_syncs(within=("/nowhere/", __file__)):
        x.sum().item()


def test_a_deferred_read_keeps_the_values_it_was_given():
    values = torch.tensor([0.0, 1.0])
    read = DeferredRead(values)
    values.add_(5.0)  # later work on the same tensor does not show
    assert read.values() == [0.0, 1.0]
