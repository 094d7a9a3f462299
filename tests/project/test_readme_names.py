"""The README and the documentation pages name only files and ``orpo.`` modules or attributes that exist.

A stale name sends a newcomer to a file that is gone (the README once cited a module and a test file that had
been renamed); this test fails on every such name, saying which page names it.  The pages are ``README.md``
and every Markdown file under ``docs/`` (the API reference's ``::: orpo.module`` blocks included, so a
reference page for a module that is gone fails here as well as in ``make docs``).  ``CHANGELOG.md`` is not
checked: its history names modules that were moved on purpose.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: the pages checked, relative to the repository root
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md"))]
TEXT = {page: (ROOT / page).read_text(encoding="utf-8") for page in PAGES}

#: repository paths: a top-level folder the repository has, then a path; globs and brace lists are expanded
_PATH = re.compile(r"(?<![\w/.])((?:src|tests|benchmarks|examples|docs|\.ci)/[A-Za-z0-9_./{},*-]*[A-Za-z0-9_/}*])")
#: dotted names under orpo: ``orpo.x.y`` (a module, or an attribute of one)
_NAME = re.compile(r"(?<![\w/.])orpo(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
#: an API reference block: ``::: orpo.module``
_REFERENCE = re.compile(r"^:::\s*(\S+)", re.MULTILINE)


def _expand(path: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", path)
    if match is None:
        return [path]
    head, tail = path[: match.start()], path[match.end() :]
    return [x for part in match.group(1).split(",") for x in _expand(head + part + tail)]


def _paths(text: str) -> list[str]:
    return sorted({p for raw in _PATH.findall(text) for p in _expand(raw)})


def _names(text: str) -> list[str]:
    # `orpo.py` in a file name such as `bench_orpo.py` is excluded by the lookbehind; a bare `orpo.py` is a file
    return sorted({n for n in _NAME.findall(text) if not n.endswith(".py")})


def _cited(find: Callable[[str], list[str]]) -> list[tuple[str, str]]:
    return [(page, item) for page in PAGES for item in find(TEXT[page])]


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


def test_the_pages_name_paths_and_modules() -> None:
    # the patterns find something on every kind of page: an empty scan would pass whatever the pages say
    assert "docs/index.md" in PAGES and "docs/reference/orpo.loss.md" in PAGES
    assert "benchmarks/RESULTS.md" in _paths(TEXT["README.md"])
    assert "docs/install.md" in _paths(TEXT["README.md"])
    assert "orpo.loss.orpo_loss" in _names(TEXT["docs/math.md"])
    assert "orpo.loss" in _names(TEXT["docs/reference/orpo.loss.md"])


@pytest.mark.parametrize(("page", "path"), _cited(_paths))
def test_every_path_a_page_names_exists(page: str, path: str) -> None:
    assert _exists(path), f"{page} names {path!r}, which is not in the repository"


@pytest.mark.parametrize(("page", "name"), _cited(_names))
def test_every_orpo_name_a_page_names_imports(page: str, name: str) -> None:
    assert _resolves(name), f"{page} names {name!r}, which does not import"


@pytest.mark.parametrize("page", [p for p in PAGES if p.startswith("docs/reference/")])
def test_every_reference_page_documents_an_orpo_module(page: str) -> None:
    targets = _REFERENCE.findall(TEXT[page])
    assert targets, f"{page} has no '::: orpo.module' block"
    for target in targets:
        assert target.startswith("orpo") and _resolves(target), f"{page} documents {target!r}, which does not import"


def test_a_gone_name_is_caught() -> None:
    assert not _resolves("orpo.training.reliability.trainer_internals")
    assert not _resolves("orpo.compat")  # moved to orpo.internals.releases
    assert not _exists("tests/unit/test_trainer_internals.py")
    assert "orpo.compat" in _names("see `orpo.compat` for what differs")
    assert _REFERENCE.findall("# x\n\n::: orpo.gone\n") == ["orpo.gone"]
    assert _expand("tests/integration/test_{resume,signals}.py") == [
        "tests/integration/test_resume.py",
        "tests/integration/test_signals.py",
    ]
