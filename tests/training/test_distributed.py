"""Data-parallel training on CPU: ``torchrun`` with 2 gloo processes equals 1 process, same global batch.

Each optimizer step sees the same 8 pairs: 2 per process x 2 processes x GA 2, or 4 x GA 2 in
one process.  The loss is normalised by the window's token and pair counts summed across
processes, and the logged metrics are sums reduced across processes before division, so the
weights and every logged number agree to float32 rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from _reliability import HERE, learnable_pairs, make_trainer, weights
from orpo.training.reliability.checkpoint import verify_checkpoint

COMMON = {"max_steps": 4, "gradient_accumulation_steps": 2, "use_cpu": True, "save_steps": 4}


def _run(tokenizer_dir, out, result, processes, batch, log):
    worker = os.path.join(HERE, "_reliability.py")
    overrides = json.dumps({**COMMON, "per_device_train_batch_size": batch})
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [
        *(launcher if processes > 1 else [sys.executable]),
        worker,
        "ddp",
        str(tokenizer_dir),
        str(out),
        str(result),
        overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as handle:
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=300)
    assert code == 0, log.read_text()[-4000:]
    with open(result) as handle:
        return json.load(handle), load_file(str(result) + ".safetensors")


def test_two_processes_match_one(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    multi, multi_weights = _run(
        tmp_path / "tokenizer", tmp_path / "two", tmp_path / "two.json", 2, 2, tmp_path / "two.log"
    )
    assert multi["world_size"] == 2
    trainer = make_trainer(
        tokenizer, tmp_path / "one", data=learnable_pairs(24), per_device_train_batch_size=4, **COMMON
    )
    trainer.train()
    single, single_weights = {"logs": trainer.recorder.logs}, weights(trainer.model)

    assert len(single["logs"]) == len(multi["logs"]) == COMMON["max_steps"]
    for one, two in zip(single["logs"], multi["logs"], strict=True):
        assert one.keys() == two.keys()
        for key, value in one.items():
            assert two[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (one["step"], key)

    diff = max((single_weights[k] - multi_weights[k]).abs().max().item() for k in single_weights)
    assert diff < 1e-6

    checkpoint = tmp_path / "two" / "checkpoint-4"
    assert verify_checkpoint(str(checkpoint)) == []
    names = set(os.listdir(checkpoint))
    assert {"orpo_state_0.json", "orpo_state_1.json", "rng_state_0.pth", "rng_state_1.pth"} <= names
