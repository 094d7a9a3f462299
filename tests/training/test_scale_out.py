"""Multi-process pieces that need no process group: the run lock, the per-filesystem committer, the launch check."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from orpo.config.usage import UsageError
from orpo.training import runlock
from orpo.training.distributed import launch_changes
from orpo.training.reliability.commit import elect_committer


def _elect(dirs: list[str], node_mains: list[bool]) -> list[bool]:
    """``elect_committer`` in one thread per process, the threads meeting at a shared barrier."""
    barrier = threading.Barrier(len(dirs))
    results: list[bool | None] = [None] * len(dirs)

    def process(index: int) -> None:
        results[index] = elect_committer(dirs[index], index, node_mains[index], "tok", barrier.wait)

    threads = [threading.Thread(target=process, args=(i,)) for i in range(len(dirs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(r is not None for r in results)
    return [bool(r) for r in results]


def test_one_committer_on_a_shared_output_dir(tmp_path):
    # 2 nodes x 2 processes, one folder: process 0 alone commits
    assert _elect([str(tmp_path)] * 4, [True, False, True, False]) == [True, False, False, False]
    assert os.listdir(tmp_path) == [], "the election markers are removed"


def test_each_node_commits_its_own_folder_without_a_shared_filesystem(tmp_path):
    node0, node1 = str(tmp_path / "node0"), str(tmp_path / "node1")
    assert _elect([node0, node0, node1, node1], [True, False, True, False]) == [True, False, True, False]


def test_second_run_on_an_output_dir_is_refused_while_the_first_lives(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / runlock.LOCK_NAME
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "then"}))
        with pytest.raises(UsageError) as caught, runlock.holding(str(tmp_path), is_main=True):
            pass
        message = str(caught.value)
        assert f"in use by another orpo run (pid {holder.pid} on {socket.gethostname()}" in message
        assert str(lock) in message and "--output-dir" in message
        assert json.loads(lock.read_text())["pid"] == holder.pid, "the holder's lock is left alone"
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_the_lock_removed_at_the_end(tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = tmp_path / runlock.LOCK_NAME
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": "then"}))
    with runlock.holding(str(tmp_path), is_main=True):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    assert f"process {gone.pid} is gone" in caplog.text


def test_replicas_get_the_main_process_refusal(tmp_path):
    with (
        pytest.raises(UsageError, match="held elsewhere"),
        runlock.holding(str(tmp_path), is_main=False, share=lambda _mine: "held elsewhere"),
    ):
        pass


def test_cpu_launch_of_several_processes_trains_over_gloo(monkeypatch, tmp_path):
    from orpo import ORPOConfig

    config = ORPOConfig(output_dir=str(tmp_path), report_to=[])
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch_changes(config, has_accelerator=False) == {"use_cpu": True}
    assert launch_changes(config, has_accelerator=True) == {}
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch_changes(config, has_accelerator=False) == {}
