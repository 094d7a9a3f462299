"""Shared pieces of the command-line tests: a tiny saved model, a preference file, a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # tests/, for conftest's data (when run as a script)

from conftest import CORPUS, learnable_pairs  # noqa: E402

BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
ENV.pop("ORPO_DEBUG", None)


def orpo_command(*args: str) -> list[str]:
    """The installed console script when there is one, else ``python -m orpo``."""
    script = BIN / "orpo"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "orpo", *args]


def aitraining_command(*args: str) -> list[str]:
    script = BIN / "aitraining"
    if script.exists():
        return [str(script), *args]
    return [
        sys.executable,
        "-c",
        "import sys; from orpo.cli import aitraining_main; sys.exit(aitraining_main())",
        *args,
    ]


def run(
    cmd: list[str], cwd: str | Path | None = None, timeout: int = 240, stdin: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, input=stdin)


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    """A 1-layer random Llama and its local tokenizer (ChatML template), saved like a hub model."""
    from orpo.demo.tiny import build_tokenizer, tiny_causal_lm

    tokenizer = build_tokenizer(CORPUS)
    model = tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, seed=seed)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def write_pairs(path: Path, n: int = 16) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in learnable_pairs(n):
            handle.write(json.dumps(row) + "\n")
    return path


def assert_one_line_error(result: subprocess.CompletedProcess, status: int, *needles: str) -> str:
    """Non-zero exit, one line on stderr naming the problem, no traceback."""
    assert result.returncode == status, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1, lines
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]
