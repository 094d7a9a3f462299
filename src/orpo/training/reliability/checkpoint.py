"""Atomic, verifiable checkpoints.

A checkpoint is written into ``<run_dir>/tmp-checkpoint-<step>``, checked, described by a
manifest (every file's size and SHA-256) and only then renamed to ``checkpoint-<step>``.  A
directory named ``checkpoint-<step>`` is therefore complete unless something damaged it
later; resuming re-checks it against its manifest and falls back to the newest checkpoint
that passes, warning about each one it skips.  ``tmp-*`` directories are what an interrupted
save leaves behind; they are never resumed from and are removed at the next start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import time
import zipfile
from collections.abc import Iterable
from typing import Any

from orpo.config.usage import describe_write_error as describe_write_error
from orpo.config.usage import format_bytes as format_bytes
from orpo.config.usage import free_bytes as free_bytes
from orpo.config.usage import is_no_space as is_no_space
from orpo.internals.private import CHECKPOINT_PREFIX as CHECKPOINT_PREFIX
from orpo.internals.private import TRAINER_STATE_NAME as TRAINER_STATE_NAME
from orpo.internals.private import checkpoint_dir as checkpoint_dir

logger = logging.getLogger(__name__)

MANIFEST_NAME = "orpo_manifest.json"
#: The version of the manifest's layout (bumped when its fields change).
MANIFEST_FORMAT = 1
STAGING_PREFIX = "tmp-checkpoint-"
REPLACED_PREFIX = "tmp-replaced-checkpoint-"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

#: Files any of which holds model weights (full model, sharded model, adapter, FSDP/DeepSpeed state).
_WEIGHT_FILE_RE = re.compile(
    r"^(model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|adapter_model\.(safetensors|bin)|"
    r"pytorch_model(-\d+-of-\d+)?\.bin|pytorch_model\.bin\.index\.json)$"
)
_WEIGHT_DIR_RE = re.compile(r"^(pytorch_model_fsdp_\d+|global_step\d+)$")
_CHUNK = 1 << 22


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or is not complete."""


def staging_dir(run_dir: str, step: int) -> str:
    """Where the checkpoint of ``step`` is written before it is committed: ``run_dir/tmp-checkpoint-<step>``.

    Args:
        run_dir: the folder of the checkpoints.
        step: the global step.
    """
    return os.path.join(run_dir, f"{STAGING_PREFIX}{step}")


def _files(root: str) -> list[str]:
    """Every regular file under ``root`` as a POSIX relative path, sorted; the manifest excluded."""
    found = []
    for parent, dirs, names in os.walk(root):
        dirs.sort()
        for name in names:
            path = os.path.join(parent, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if rel != MANIFEST_NAME and os.path.isfile(path):
                found.append(rel)
    return sorted(found)


def sha256_file(path: str, fsync: bool = False) -> str:
    """The file's SHA-256, hex.

    Args:
        path: the file.
        fsync: also flush the file to disk (best effort), as a manifest needs.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
        if fsync:
            with contextlib.suppress(OSError):
                os.fsync(handle.fileno())
    return digest.hexdigest()


def _fsync_dir(path: str) -> None:
    """Make a rename or a new entry durable (best effort: not every filesystem supports it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---- structural checks (no manifest needed) ---------------------------------------------
def _check_safetensors(path: str) -> str | None:
    """None if the file is a whole safetensors file: header parses and the data is all there."""
    size = os.path.getsize(path)
    if size < 8:
        return f"{os.path.basename(path)}: {size} bytes, too short for a safetensors file"
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if 8 + header_len > size:
            return f"{os.path.basename(path)}: truncated (header says {header_len} bytes, file has {size})"
        try:
            header = json.loads(handle.read(header_len))
        except (ValueError, UnicodeDecodeError) as err:
            return f"{os.path.basename(path)}: unreadable header ({err})"
    if not isinstance(header, dict):
        return f"{os.path.basename(path)}: unreadable header"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            return f"{os.path.basename(path)}: tensor {name!r} has no data_offsets"
    if 8 + header_len + end != size:
        return f"{os.path.basename(path)}: truncated or padded ({size} bytes, tensors need {8 + header_len + end})"
    return None


def _check_json(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            json.load(handle)
    except (OSError, ValueError) as err:
        return f"{os.path.basename(path)}: not valid JSON ({err})"
    return None


def _check_torch_zip(path: str) -> str | None:
    """torch.save writes a zip archive; a truncated one has no central directory."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04":
        return None  # legacy (non-zip) torch serialisation: nothing cheap to check
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        return f"{os.path.basename(path)}: damaged ({err})"
    return None


def check_structure(root: str, require_trainer_state: bool = True) -> list[str]:
    """Problems found by reading headers only: missing essentials, truncated or unreadable files.

    Args:
        root: the checkpoint folder.
        require_trainer_state: whether a missing ``trainer_state.json`` is a problem.

    Returns:
        One line per problem; empty when none was found.
    """
    if not os.path.isdir(root):
        return [f"{root} is not a directory"]
    problems: list[str] = []
    files = _files(root)
    names = set(files)
    if require_trainer_state and TRAINER_STATE_NAME not in names:
        problems.append(f"{TRAINER_STATE_NAME} is missing")
    top = set(os.listdir(root))
    if not any(_WEIGHT_FILE_RE.match(name) for name in names) and not any(_WEIGHT_DIR_RE.match(n) for n in top):
        problems.append("no model or adapter weights")
    for rel in files:
        path = os.path.join(root, rel)
        problem = None
        if rel.endswith(".safetensors"):
            problem = _check_safetensors(path)
        elif rel.endswith(".json"):
            problem = _check_json(path)
        elif rel.endswith((".pt", ".pth", ".bin")):
            problem = _check_torch_zip(path)
        if problem:
            problems.append(problem)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index_name in names and not any(index_name in p for p in problems):
            with open(os.path.join(root, index_name), encoding="utf-8") as handle:
                shards = set(json.load(handle).get("weight_map", {}).values())
            missing = sorted(shards - names)
            if missing:
                problems.append(f"{index_name} lists missing shard(s): {', '.join(missing)}")
    return problems


# ---- manifest ---------------------------------------------------------------------------
def write_manifest(root: str, step: int | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file (flushing each to disk) and write the manifest last.

    Args:
        root: the (staging) checkpoint folder.
        step: the global step recorded in the manifest.
        extra: more keys for the manifest.

    Returns:
        The manifest written.
    """
    entries = {}
    for rel in _files(root):
        path = os.path.join(root, rel)
        entries[rel] = {"size": os.path.getsize(path), "sha256": sha256_file(path, fsync=True)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "global_step": step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": entries,
        **(extra or {}),
    }
    path = os.path.join(root, MANIFEST_NAME)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.flush()
        with contextlib.suppress(OSError):
            os.fsync(handle.fileno())
    _fsync_dir(root)
    return manifest


def read_manifest(root: str) -> dict[str, Any] | None:
    """The manifest of the checkpoint ``root``, or None if it has none.

    Args:
        root: the checkpoint folder.

    Raises:
        ValueError: the manifest is not valid JSON or has no file list.
    """
    path = os.path.join(root, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError("manifest has no file list")
    return manifest


def verify_checkpoint(root: str, hashes: bool = True) -> list[str]:
    """Problems of a checkpoint directory; empty if it is complete.

    With a manifest: every listed file must exist with its recorded size (and hash, if
    ``hashes``), plus the structural checks.  Without one (a checkpoint not written by orpo)
    only the structural checks apply.

    Args:
        root: the checkpoint folder.
        hashes: also compare every file's SHA-256 (slower than sizes alone).

    Returns:
        One line per problem; empty when the checkpoint is complete.
    """
    try:
        manifest = read_manifest(root)
    except (OSError, ValueError) as err:
        return [f"{MANIFEST_NAME} is unreadable ({err})"]
    problems = check_structure(root)
    if manifest is None:
        return problems
    for rel, info in sorted(manifest["files"].items()):
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            problems.append(f"{rel} is missing")
            continue
        size = os.path.getsize(path)
        if size != info.get("size"):
            problems.append(f"{rel} has {size} bytes, the manifest says {info.get('size')}")
        elif hashes and sha256_file(path) != info.get("sha256"):
            problems.append(f"{rel} does not match its SHA-256 in the manifest (corrupted)")
    return problems


def commit_checkpoint(staging: str, final: str) -> None:
    """Rename a verified staging directory to its final name, replacing an older one of that name.

    Args:
        staging: the verified ``tmp-checkpoint-<step>`` folder.
        final: its ``checkpoint-<step>`` name.
    """
    parent = os.path.dirname(os.path.abspath(final))
    replaced = None
    if os.path.exists(final):
        replaced = os.path.join(parent, REPLACED_PREFIX + os.path.basename(final).split("-")[-1])
        if os.path.exists(replaced):
            shutil.rmtree(replaced)
        os.replace(final, replaced)
    os.replace(staging, final)
    _fsync_dir(parent)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


# ---- finding checkpoints ----------------------------------------------------------------
def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every ``checkpoint-<step>`` directory, newest first.

    Args:
        output_dir: the run's output folder.
    """
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_RE.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def stale_staging_dirs(output_dir: str) -> list[str]:
    """The ``tmp-checkpoint-*`` and ``tmp-replaced-checkpoint-*`` folders in ``output_dir``, sorted.

    Args:
        output_dir: the run's output folder.
    """
    if not os.path.isdir(output_dir):
        return []
    return sorted(
        os.path.join(output_dir, name)
        for name in os.listdir(output_dir)
        if name.startswith((STAGING_PREFIX, REPLACED_PREFIX)) and os.path.isdir(os.path.join(output_dir, name))
    )


def remove_stale_staging(output_dir: str) -> list[str]:
    """Delete what interrupted saves left behind; returns the removed paths.

    Args:
        output_dir: the run's output folder.
    """
    removed = stale_staging_dirs(output_dir)
    for path in removed:
        logger.warning("removing %s: an incomplete checkpoint left by an interrupted save", path)
        shutil.rmtree(path, ignore_errors=True)
    return removed


def latest_complete_checkpoint(output_dir: str, hashes: bool = True) -> tuple[str | None, list[tuple[str, list[str]]]]:
    """The newest checkpoint that verifies, and the (path, problems) of every newer one skipped.

    Args:
        output_dir: the run's output folder.
        hashes: also compare SHA-256 hashes (see :func:`verify_checkpoint`).

    Returns:
        ``(path or None, skipped)``.
    """
    skipped: list[tuple[str, list[str]]] = []
    for _step, path in list_checkpoints(output_dir):
        problems = verify_checkpoint(path, hashes=hashes)
        if not problems:
            if not os.path.isfile(os.path.join(path, MANIFEST_NAME)):
                logger.warning(
                    "%s has no %s (not written by orpo): it passed the structural checks but its files "
                    "cannot be verified against recorded sizes and hashes",
                    path,
                    MANIFEST_NAME,
                )
            return path, skipped
        logger.warning("skipping incomplete or damaged checkpoint %s: %s", path, "; ".join(problems))
        skipped.append((path, problems))
    return None, skipped


def describe_skipped(skipped: Iterable[tuple[str, list[str]]]) -> str:
    """The skipped checkpoints and their problems, as one line.

    Args:
        skipped: (path, problems) pairs, as :func:`latest_complete_checkpoint` returns them.
    """
    return "; ".join(f"{os.path.basename(path)} ({', '.join(problems)})" for path, problems in skipped)
