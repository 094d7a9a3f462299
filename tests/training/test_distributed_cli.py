"""``orpo train`` under ``torchrun`` with 2 CPU processes: one run, a loadable model equal to one process's.

Launched *without* ``--use-cpu``: on a machine without GPUs the processes must still form one gloo
group (else each would train alone, on a quarter of the global batch, racing on the output dir).
The final model is saved by every process taking part (:mod:`orpo.training.distributed`) and must load with
``from_pretrained`` and equal the single-process run with the same global batch (8 pairs per step:
2 per process x 2 processes x GA 2, or 4 x GA 2).  A third run resumes from the 2-process
checkpoint at step 2 (its per-process RNG and loop-state files) and must end at the same weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _cli_support import ENV, orpo_command, run, save_tiny_model, write_pairs
from orpo.training.reliability.checkpoint import verify_checkpoint

pytestmark = pytest.mark.slow

FLAGS = [
    "--model", "model", "--data-path", "prefs.jsonl",
    "--max-steps", "4", "--gradient-accumulation-steps", "2", "--learning-rate", "1e-3",
    "--logging-steps", "1", "--save-strategy", "steps", "--save-steps", "2", "--seed", "1",
    "--max-length", "64", "--max-prompt-length", "32", "--dataloader-num-workers", "0", "--report-to", "none",
    # padded rows: the same float32 sums in both runs; the row layouts' 2-process run is test_distributed.py's
    "--layout", "padded",
]  # fmt: skip


def _torchrun(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "orpo"]
    return subprocess.run(
        [*command, "train", *args], cwd=workspace, env=ENV, capture_output=True, text=True, timeout=400
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("ddp")
    save_tiny_model(workspace / "model")
    pairs = write_pairs(workspace / "prefs.jsonl", 24)
    with pairs.open("a", encoding="utf-8") as handle:  # one pair the data policy drops, with a warning
        handle.write(json.dumps({"prompt": "same?", "chosen": "yes it is", "rejected": "yes it is"}) + "\n")
    two = _torchrun(workspace, *FLAGS, "--output-dir", "two", "--per-device-train-batch-size", "2")
    assert two.returncode == 0, two.stderr[-4000:]
    one = run(orpo_command("train", *FLAGS, "--output-dir", "one", "--per-device-train-batch-size", "4"), workspace)
    assert one.returncode == 0, one.stderr[-4000:]
    return workspace, two, one


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out))
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def test_two_processes_train_one_run_and_save_a_loadable_equal_model(runs):
    workspace, _two, _one = runs
    state = json.loads((workspace / "two" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    single, double = _weights(workspace / "one"), _weights(workspace / "two")
    assert single.keys() == double.keys()
    diff = max((single[k].double() - double[k].double()).abs().max().item() for k in single)
    assert diff < 1e-6
    for step in (2, 4):
        assert verify_checkpoint(str(workspace / "two" / f"checkpoint-{step}")) == []
    assert not list((workspace / "two").glob("tmp-*")), "a staging folder was left behind"
    assert not (workspace / "two" / ".orpo-run.lock").exists(), "the run lock outlived the run"


def test_console_output_comes_from_the_main_process_once(runs):
    _workspace, two, one = runs
    output = two.stdout + two.stderr
    assert output.count("orpo train: model model") == 1  # the banner
    assert output.count("ORPO training summary") == 1
    for line in ("dropping 1 row(s): chosen == rejected", "prepared train: 25 rows"):  # the data report
        assert line in one.stderr, one.stderr[-2000:]
        assert output.count(line) == 1, output[-3000:]


def test_resume_from_a_two_process_checkpoint_ends_at_the_same_weights(runs):
    workspace, _two, _one = runs
    checkpoint = workspace / "two" / "checkpoint-2"
    resumed = _torchrun(
        workspace, *FLAGS, "--output-dir", "resumed", "--per-device-train-batch-size", "2",
        "--resume-from-checkpoint", str(checkpoint),
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    state = json.loads((workspace / "resumed" / "trainer_state.json").read_text())
    assert [log["step"] for log in state["log_history"] if "loss" in log] == [1, 2, 3, 4]
    straight, again = _weights(workspace / "two"), _weights(workspace / "resumed")
    assert max((straight[k].double() - again[k].double()).abs().max().item() for k in straight) < 1e-6
