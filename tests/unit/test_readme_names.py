"""The README names only files and ``orpo.`` modules or attributes that exist.

A stale name sends a newcomer to a file that is gone (the README once cited a module and a test file that had
been renamed); this test fails on the first such name, saying which.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")

#: repository paths: a top-level folder the repository has, then a path; globs and brace lists are expanded
_PATH = re.compile(r"(?<![\w/.])((?:src|tests|benchmarks|examples|docs|\.ci)/[A-Za-z0-9_./{},*-]*[A-Za-z0-9_/}*])")
#: dotted names under orpo: ``orpo.x.y`` (a module, or an attribute of one)
_NAME = re.compile(r"(?<![\w/.])orpo(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _expand(path: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", path)
    if match is None:
        return [path]
    head, tail = path[: match.start()], path[match.end() :]
    return [x for part in match.group(1).split(",") for x in _expand(head + part + tail)]


def _paths() -> list[str]:
    return sorted({p for raw in _PATH.findall(README) for p in _expand(raw)})


def _names() -> list[str]:
    # `orpo.py` in a file name such as `bench_orpo.py` is excluded by the lookbehind; a bare `orpo.py` is a file
    return sorted({n for n in _NAME.findall(README) if not n.endswith(".py")})


def _exists(path: str) -> bool:
    if any(c in path for c in "*?["):
        return any(ROOT.glob(path))
    return (ROOT / path).exists()


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_the_readme_names_paths_and_modules() -> None:
    # the patterns find something: an empty scan would pass whatever the README says
    assert "benchmarks/RESULTS.md" in _paths()
    assert "orpo.loss" in _names()


@pytest.mark.parametrize("path", _paths())
def test_every_path_the_readme_names_exists(path: str) -> None:
    assert _exists(path), f"README.md names {path!r}, which is not in the repository"


@pytest.mark.parametrize("name", _names())
def test_every_orpo_name_the_readme_names_imports(name: str) -> None:
    assert _resolves(name), f"README.md names {name!r}, which does not import"


def test_a_gone_name_is_caught() -> None:
    assert not _resolves("orpo.training.reliability.trainer_internals")
    assert not _exists("tests/unit/test_trainer_internals.py")
    assert _expand("tests/integration/test_{resume,signals}.py") == [
        "tests/integration/test_resume.py",
        "tests/integration/test_signals.py",
    ]
