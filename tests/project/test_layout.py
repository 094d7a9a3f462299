"""The test tree mirrors the package: one folder per subpackage of ``src/orpo`` (plus ``project/`` for the
repository itself), and the package's top level stays small."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "orpo"
TESTS = ROOT / "tests"


def _subpackages() -> set[str]:
    return {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def test_one_test_folder_per_subpackage():
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and p.name not in ("fixtures", "__pycache__")}
    assert folders == _subpackages() | {"loss", "project"}
    for folder in folders:
        assert list((TESTS / folder).glob("test_*.py")), f"tests/{folder} holds no tests"


def test_the_package_top_level_has_at_most_12_entries():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert entries == [
        "__init__.py", "__main__.py", "cli", "config", "data", "demo", "internals", "loss.py", "models", "py.typed",
        "scoring", "training",
    ]  # fmt: skip


def test_no_two_modules_share_a_file_name():
    """One name, one idea: a module's file name is unique in the package (``__init__.py`` aside)."""
    seen: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py":
            seen.setdefault(path.stem, []).append(str(path.relative_to(PACKAGE)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
