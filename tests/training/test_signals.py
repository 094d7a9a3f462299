"""SIGINT/SIGTERM: the running step finishes, a resumable checkpoint is saved, the process exits cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from _reliability import HERE, make_trainer, max_diff, weights
from orpo.training.reliability.checkpoint import verify_checkpoint

RUN = {"max_steps": 12, "save_steps": 1000, "logging_steps": 1}


def _start(tokenizer, tmp_path, name):
    tokenizer_dir = tmp_path / "tokenizer"
    if not tokenizer_dir.exists():
        tokenizer.save_pretrained(tokenizer_dir)
    out, result = tmp_path / name, tmp_path / f"{name}.json"
    stderr = open(tmp_path / f"{name}.stderr", "w+")  # noqa: SIM115 - closed by the caller
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.join(HERE, "_reliability.py"),
            "signal",
            str(tokenizer_dir),
            str(out),
            str(result),
            json.dumps({**RUN, "step_delay": 0.25}),
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    return proc, out, stderr


def _wait_for_step(proc, step, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.strip() == f"STEP {step}":
            return
    proc.kill()
    pytest.fail(f"the worker never reported step {step}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_exits_cleanly(tokenizer, tmp_path, signum):
    proc, out, stderr = _start(tokenizer, tmp_path, "run")
    _wait_for_step(proc, 2)
    proc.send_signal(signum)
    proc.stdout.read()
    code = proc.wait(timeout=120)
    stderr.seek(0)
    log = stderr.read()
    stderr.close()
    assert code == 128 + signum, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert f"training stopped by {signum.name} at step" in log
    checkpoints = [name for name in os.listdir(out) if name.startswith("checkpoint-")]
    assert len(checkpoints) == 1, os.listdir(out)
    step = int(checkpoints[0].split("-")[1])
    assert 2 <= step < RUN["max_steps"]
    assert verify_checkpoint(str(out / checkpoints[0])) == []
    assert not any(name.startswith("tmp-") for name in os.listdir(out))

    if signum == signal.SIGTERM:  # and it resumes to the same result as an uninterrupted run
        resumed = make_trainer(tokenizer, out, **RUN)
        resumed.train(resume_from_checkpoint=True)
        straight = make_trainer(tokenizer, tmp_path / "straight", **RUN)
        straight.train()
        assert resumed.state.global_step == RUN["max_steps"]
        assert max_diff(weights(resumed.model), weights(straight.model)) < 1e-6
        assert resumed.recorder.logs[-1]["loss"] == pytest.approx(straight.recorder.logs[-1]["loss"], rel=1e-6)


def test_a_second_interrupt_stops_at_once_and_says_so(tokenizer, tmp_path):
    """Two Ctrl-C in a row: no checkpoint of this step is claimed, no partial folder is left."""
    proc, out, stderr = _start(tokenizer, tmp_path, "twice")
    _wait_for_step(proc, 2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)  # within the same step (each takes > 0.25 s)
    proc.send_signal(signal.SIGINT)
    proc.stdout.read()
    code = proc.wait(timeout=120)
    stderr.seek(0)
    log = stderr.read()
    stderr.close()
    assert code == 130, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert (
        "received SIGINT again: stopping at once, without a checkpoint of this step (no checkpoint to resume from)"
    ) in log
    assert "saved" not in log and "training stopped by" not in log
    assert not any(name.startswith(("tmp-", "checkpoint-")) for name in os.listdir(out))


def test_handlers_are_restored_after_training(tokenizer, tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    make_trainer(tokenizer, tmp_path, max_steps=1, save_strategy="no").train()
    assert {s: signal.getsignal(s) for s in before} == before
