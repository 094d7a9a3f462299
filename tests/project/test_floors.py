"""The declared floors (pyproject.toml) and the constraints CI tests them with (.ci/floors.txt) are one list.

CI's floors pass installs exactly ``.ci/floors.txt``; were a floor raised or lowered in one file only, that
pass would test versions nobody declared.  torch is the one exception: its floor is transformers' own, and the
pass runs the CPU wheel 2.13.0 (every other torch on the registry is a multi-GB CUDA build).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[2]
#: Pinned in .ci/floors.txt at other than their declared floor, with the reason.
NOT_AT_FLOOR = {"torch": Version("2.13.0")}


def declared_floors() -> dict[str, Version]:
    """Each runtime dependency's ``>=`` version, from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    floors = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert len(lower) == 1, f"pyproject.toml: {line!r} needs exactly one '>=' floor"
        floors[requirement.name.lower()] = Version(lower[0])
    return floors


def constrained_pins() -> dict[str, Version]:
    """Each ``name==version`` line of .ci/floors.txt."""
    pins = {}
    for number, raw in enumerate((ROOT / ".ci" / "floors.txt").read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f".ci/floors.txt, line {number}: expected name==version"
        pins[requirement.name.lower()] = Version(specs[0].version)
    return pins


def test_every_declared_floor_is_the_version_ci_pins():
    floors, pins = declared_floors(), constrained_pins()
    assert sorted(pins) == sorted(floors), "pyproject.toml's dependencies and .ci/floors.txt name different packages"
    assert pins == {name: NOT_AT_FLOOR.get(name, floor) for name, floor in floors.items()}
