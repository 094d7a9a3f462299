"""Fast start: `orpo --help`, `--version` and the help of every command but train import no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import orpo
from _cli_support import ENV

_PROBE = """
import json, sys
from orpo.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit_:
    status = exit_.code
heavy = sorted(name for name in ("torch", "transformers", "datasets", "orpo.training.trainer") if name in sys.modules)
print(json.dumps({"status": status, "heavy": heavy}))
"""


def _probe(*argv: str) -> dict:
    result = subprocess.run([sys.executable, "-c", _PROBE, *argv], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["generate", "--help"],
        ["chat", "--help"],
        ["merge", "--help"],
        ["plot", "--help"],
        ["demo", "--help"],
        ["data", "--help"],
        ["data", "inspect", "--help"],
    ],
    ids=" ".join,
)
def test_help_and_version_import_no_torch(argv):
    assert _probe(*argv) == {"status": 0, "heavy": []}


def test_import_orpo_loss_does_not_import_the_trainer():
    code = "import sys, orpo.loss; print('orpo.training.trainer' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "False"], result.stderr[-2000:]


def test_python_dash_m_orpo_version():
    result = subprocess.run(
        [sys.executable, "-m", "orpo", "--version"], env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout == f"orpo {orpo.__version__}\n", result.stderr


def test_python_dash_m_orpo_runs_commands():
    result = subprocess.run(
        [sys.executable, "-m", "orpo", "train", "--lerning-rate", "1"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "unknown flag --lerning-rate (did you mean --learning-rate?) (see orpo train --help)"
    )


def test_lazy_top_level_names():
    """Every name in orpo.__all__ resolves, and to the object its module defines."""
    import importlib

    for name in orpo.__all__:
        value = getattr(orpo, name)
        if name != "__version__":
            module = importlib.import_module(f"orpo.{orpo._WHERE[name]}")
            assert getattr(module, name) is value, name
    assert set(orpo._WHERE) | {"__version__"} == set(orpo.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        orpo.nope  # noqa: B018
