"""``orpo train`` under torchrun on the GPUs present: FSDP2 (sharded checkpoints) and DeepSpeed ZeRO-3.

Skipped without CUDA; ZeRO-3 also without ``deepspeed``.  Each run must end with a model that
``from_pretrained`` loads (the sharded weights gathered by every process), verified checkpoints, no
staging folder and no run lock left; the FSDP run then resumes from its sharded checkpoint.
On a GPU machine: ``python -m pytest -q tests/training/test_scale_gpu.py``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orpo.training.reliability.checkpoint import verify_checkpoint

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _cli_support import ENV, save_tiny_model, write_pairs  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

FLAGS = [
    "--model", "model", "--data-path", "prefs.jsonl", "--max-steps", "4", "--save-strategy", "steps",
    "--save-steps", "2", "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "2",
    "--learning-rate", "1e-3", "--logging-steps", "1", "--max-length", "64", "--max-prompt-length", "32",
    "--report-to", "none", "--bf16", "false",
]  # fmt: skip
FSDP_CONFIG = {
    "version": 2,
    "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
    "state_dict_type": "SHARDED_STATE_DICT",
}
ZERO3 = {
    "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-scale")
    save_tiny_model(root / "model")
    write_pairs(root / "prefs.jsonl", 32)
    return root


def _train(workspace: Path, *args: str) -> None:
    processes = min(2, torch.cuda.device_count())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    result = subprocess.run(
        [*command, "-m", "orpo", "train", *FLAGS, *args],
        cwd=workspace,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def _check_output(out: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    for step in (2, 4):
        assert verify_checkpoint(str(out / f"checkpoint-{step}")) == []
    assert not list(out.glob("tmp-*")) and not (out / ".orpo-run.lock").exists()
    model = AutoModelForCausalLM.from_pretrained(str(out))
    weights = {name: value.detach().float() for name, value in model.state_dict().items()}
    assert all(torch.isfinite(value).all() for value in weights.values())
    return weights


def test_fsdp2_sharded_state_dict_saves_a_full_model_and_resumes(workspace):
    fsdp = ["--fsdp", "true", "--fsdp-config", json.dumps(FSDP_CONFIG)]
    _train(workspace, *fsdp, "--output-dir", "fsdp")
    straight = _check_output(workspace / "fsdp")
    assert any(p.name.startswith("pytorch_model_fsdp") for p in (workspace / "fsdp" / "checkpoint-2").iterdir())
    checkpoint = str(workspace / "fsdp" / "checkpoint-2")
    _train(workspace, *fsdp, "--output-dir", "fsdp-resumed", "--resume-from-checkpoint", checkpoint)
    resumed = _check_output(workspace / "fsdp-resumed")
    for name, value in straight.items():
        assert torch.allclose(value, resumed[name], rtol=1e-4, atol=1e-5), name


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")
def test_zero3_saves_a_full_model(workspace):
    config = workspace / "zero3.json"
    config.write_text(json.dumps(ZERO3), encoding="utf-8")
    _train(workspace, "--deepspeed", str(config), "--output-dir", "zero3")
    _check_output(workspace / "zero3")
