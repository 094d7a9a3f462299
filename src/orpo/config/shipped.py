"""Files shipped inside the package, found by name: recipes (``recipes/*.yaml``) and launch configs
(``launch/``: accelerate YAMLs and DeepSpeed JSONs), so ``--config qwen2-0.5b-lora`` and
``accelerate launch --config_file $(orpo config path fsdp)`` work from an installed package.

A DeepSpeed accelerate YAML names its JSON relative to itself, which accelerate would read relative to the
working directory; :func:`launch_file` therefore hands out a copy (in orpo's cache directory) whose
``deepspeed_config_file`` is the installed JSON's absolute path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from orpo.config.usage import UsageError

PACKAGE_DIR = Path(__file__).resolve().parent
RECIPES_DIR = PACKAGE_DIR / "recipes"
LAUNCH_DIR = PACKAGE_DIR / "launch"
_DEEPSPEED_FILE = re.compile(r"^(\s*deepspeed_config_file:\s*)([^\s#]+)(.*)$", re.MULTILINE)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def launch_names() -> list[str]:
    return sorted(p.stem for p in LAUNCH_DIR.iterdir() if p.suffix in (".yaml", ".json"))


def _unknown(name: str, kind: str, names: list[str]) -> UsageError:
    import difflib

    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return UsageError(f"no {kind} file or shipped name {name!r}{hint}; shipped: {', '.join(names)}")


def recipe_file(value: str) -> Path:
    """``--config VALUE``: an existing file as given, else a shipped recipe's name (with or without .yaml).

    A missing path (with a ``/`` or a YAML suffix) is returned as given, for the file-not-found error.
    """
    given = Path(value).expanduser()
    if given.is_file():
        return given
    if "/" not in value and _stem(value) in recipe_names():
        return RECIPES_DIR / f"{_stem(value)}.yaml"
    if "/" in value or given.suffix in (".yaml", ".yml"):
        return given  # a file path: recipe_source says it is not found
    raise _unknown(value, "recipe", recipe_names())


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "orpo" / "launch"


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if name.endswith((".yaml", ".json")) else name


def launch_file(name: str) -> Path:
    """The installed path of a launch config (a DeepSpeed YAML: a copy pointing at the installed JSON)."""
    stem = _stem(name)
    if stem not in launch_names():
        raise _unknown(name, "launch config", launch_names())
    path = next(p for p in LAUNCH_DIR.iterdir() if p.stem == stem)
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".yaml" or not _DEEPSPEED_FILE.search(text):
        return path
    resolved = _DEEPSPEED_FILE.sub(lambda m: f"{m[1]}{(LAUNCH_DIR / m[2]).resolve()}{m[3]}", text)
    out = cache_dir() / path.name
    if not out.is_file() or out.read_text(encoding="utf-8") != resolved:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        tmp.write_text(resolved, encoding="utf-8")
        tmp.replace(out)
    return out


def shipped_path(name: str) -> Path:
    """A shipped recipe or launch config by name: what ``orpo config path NAME`` prints."""
    if _stem(name) in recipe_names():
        return RECIPES_DIR / f"{_stem(name)}.yaml"
    if _stem(name) in launch_names():
        return launch_file(name)
    raise _unknown(name, "shipped", recipe_names() + launch_names())
