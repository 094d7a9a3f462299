"""FSDP smoke test on GPU: trains, writes verified checkpoints, resumes to the uninterrupted result.

Skipped without CUDA (CI has none).  Uses ``torchrun`` with one process per GPU (at most 2),
FSDP2 full sharding wrapped per decoder layer, float32 so the comparison can be tight.
On a GPU machine: ``python -m pytest -q tests/training/test_fsdp.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from orpo.training.reliability.checkpoint import verify_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

WORKER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_reliability.py")
FSDP = {
    "fsdp": True,
    "fsdp_config": {
        "version": 2,
        "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
        "reshard_after_forward": True,
    },
    "max_steps": 6,
    "save_steps": 3,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 2,
}


def _torchrun(tmp_path, name, **extra):
    processes = min(2, torch.cuda.device_count())
    result = tmp_path / f"{name}.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        WORKER,
        "fsdp",
        str(tmp_path / "tokenizer"),
        str(tmp_path / name),
        str(result),
        json.dumps({**FSDP, **extra}),
    ]
    log = tmp_path / f"{name}.log"
    with open(log, "w") as handle:
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, timeout=600)
    assert code == 0, log.read_text()[-4000:]
    from safetensors.torch import load_file

    return json.loads(result.read_text()), load_file(str(result) + ".safetensors")


def test_fsdp_trains_checkpoints_and_resumes(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    straight, straight_weights = _torchrun(tmp_path, "straight")
    losses = [entry["loss"] for entry in straight["logs"]]
    assert len(losses) == FSDP["max_steps"] and all(torch.isfinite(torch.tensor(losses)))
    for step in (3, 6):
        assert verify_checkpoint(str(tmp_path / "straight" / f"checkpoint-{step}")) == []

    _torchrun(tmp_path, "resumed", stop_at=2)
    resumed, resumed_weights = _torchrun(tmp_path, "resumed", resume=True)
    assert [e["step"] for e in resumed["logs"]] == [3, 4, 5, 6]
    for name, value in straight_weights.items():
        assert torch.allclose(value, resumed_weights[name], rtol=1e-4, atol=1e-5), name
