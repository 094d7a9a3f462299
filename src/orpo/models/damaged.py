"""Damaged model files, named: "<path>: truncated or corrupt (<short cause>)".

A cut-short download or copy of a model surfaces in the loader's words without the file's name
("Error while deserializing header: incomplete metadata, file not fully covered", "PytorchStreamReader
failed reading zip archive", "Expecting value: line 1 column 9").  When a load fails,
:func:`naming_damaged_files` looks at the files that load reads (config and tokenizer JSON, safetensors
headers, PyTorch checkpoints, adapter files) and, if one of them is damaged, raises :class:`DamagedFile`
naming it.  Nothing is checked on a load that succeeds, so a good model loads as fast as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

#: What a load reads: a tokenizer, a model's weights, a LoRA adapter.
LoadKind = Literal["tokenizer", "model", "adapter"]

#: JSON files each kind of load reads (those present are checked, in this order).
JSON_FILES: dict[str, tuple[str, ...]] = {
    "tokenizer": (
        "config.json",
        "tokenizer_config.json",
        "tokenizer.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "chat_template.json",
        "preprocessor_config.json",
        "processor_config.json",
    ),
    "model": ("config.json", "generation_config.json"),
    "adapter": ("adapter_config.json",),
}
#: Weight files each kind of load reads, as globs (index JSON files first: they list the shards).
WEIGHT_GLOBS: dict[str, tuple[str, ...]] = {
    "tokenizer": (),
    "model": ("*.safetensors.index.json", "*.bin.index.json", "*.safetensors", "pytorch_model*.bin"),
    "adapter": ("adapter_model.safetensors", "adapter_model.bin"),
}


class DamagedFile(OSError):
    """A file a load reads is truncated or corrupt; the message names it and the cause.

    Args:
        path: the file, as the user would recognise it.
        cause: why it cannot be read, in a few words.
    """

    def __init__(self, path: str, cause: str) -> None:
        super().__init__(f"{path}: truncated or corrupt ({cause})")
        self.path, self.cause = path, cause


def json_problem(path: Path) -> str | None:
    """Why a JSON file cannot be read (None: it can), with the line and column of a syntax error.

    Args:
        path: the file; it must exist.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8 text: byte 0x{err.object[err.start]:02x} at offset {err.start}"
    if not text.strip():
        return "empty file"
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        return f"invalid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be read (None: its header and size agree).

    The format: 8 bytes of header length, a JSON header giving each tensor's byte range, the data; a
    truncated file is shorter than the header says.

    Args:
        path: the file; it must exist.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{size} bytes, too short for a safetensors header"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"header of {length} bytes in a {size}-byte file"
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
        ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError, IndexError):
        return "unreadable safetensors header"
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f"has {size} of its {expected} bytes"
    if size > expected:
        return f"{size - expected} bytes after the data its header describes"
    return None


def _short(err: BaseException) -> str:
    """A loader's message in a few words: torch's weights-only refusal runs to a paragraph."""
    text = " ".join(str(err).split())
    match = re.search(r"WeightsUnpickler error: ([^.]*)", text)
    if match:
        return f"cannot unpickle: {match.group(1)}"
    text = text.split(". ")[0]
    return (text[:120] + "...") if len(text) > 120 else text or type(err).__name__


def torch_problem(path: Path) -> str | None:
    """Why a PyTorch checkpoint (``pytorch_model.bin``) cannot be read (None: it loads).

    The checkpoint is loaded (``weights_only``, memory-mapped where it is a zip archive) to find out.

    Args:
        path: the file; it must exist.
    """
    import torch

    with path.open("rb") as handle:
        head = handle.read(4)
    zipped = head.startswith(b"PK")
    if zipped:
        if not zipfile.is_zipfile(path):
            return "incomplete zip archive, its central directory is missing"
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, EOFError, OSError) as err:
            return f"unreadable zip archive: {_short(err)}"
        if bad is not None:
            return f"bad checksum of {bad} in the zip archive"
    elif not head.startswith(b"\x80"):
        return "neither a zip archive nor a pickle, so not a PyTorch checkpoint"
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError) as err:
        return _short(err)
    return None


def _problem(path: Path) -> str | None:
    name = path.name
    if name.endswith(".json"):
        return json_problem(path)
    if name.endswith(".safetensors"):
        return safetensors_problem(path)
    return torch_problem(path)


def _files(folder: Path, kind: LoadKind) -> list[Path]:
    files = [folder / name for name in JSON_FILES[kind]]
    for pattern in WEIGHT_GLOBS[kind]:
        files.extend(sorted(folder.glob(pattern)))
    return [file for file in dict.fromkeys(files) if file.is_file()]


def find_damaged(name_or_path: str, folder: Path, kind: LoadKind) -> DamagedFile | None:
    """The first damaged file ``kind``'s load reads in ``folder``, named as the user gave the model.

    Args:
        name_or_path: the model as the user gave it (a hub id or a path).
        folder: where its files are (:func:`local_folder`).
        kind: which load's files to check (:data:`JSON_FILES`, :data:`WEIGHT_GLOBS`).
    """
    for file in _files(folder, kind):
        try:
            cause = _problem(file)
        except OSError as err:  # unreadable: permissions, a dangling cache link
            cause = _short(err)
        if cause is not None:
            shown = os.path.join(name_or_path, file.name) if Path(name_or_path).expanduser() == folder else str(file)
            return DamagedFile(shown, cause)
    return None


def local_folder(name_or_path: str, revision: str | None = None) -> Path | None:
    """The folder a model's files are read from: the local directory, or its hub cache snapshot.

    Args:
        name_or_path: a local folder or a hub id.
        revision: the hub revision whose snapshot to find; None: the default branch.

    Returns:
        The folder, or None where the model is neither local nor cached.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency
        return None
    for name in ("config.json", "adapter_config.json", "tokenizer_config.json"):
        try:
            found: Any = try_to_load_from_cache(name_or_path, name, revision=revision)
        except ValueError:  # not a repository id
            return None
        if isinstance(found, str):
            return Path(found).parent
    return None


@contextlib.contextmanager
def naming_damaged_files(name_or_path: str, kind: LoadKind, revision: str | None = None) -> Iterator[None]:
    """A load of ``name_or_path`` that fails on a damaged file raises :class:`DamagedFile` naming it;
    any other failure is raised as it is.

    Args:
        name_or_path: the model being loaded, as the user gave it.
        kind: what the load reads.
        revision: the hub revision being loaded (to find its cached files).

    Raises:
        DamagedFile: the load failed and one of the files it reads is damaged.
    """
    try:
        yield
    except DamagedFile:
        raise
    except Exception as err:
        folder = local_folder(str(name_or_path), revision)
        damaged = find_damaged(str(name_or_path), folder, kind) if folder is not None else None
        if damaged is None:
            raise
        raise damaged from err


def read_json(path: str | Path) -> Any:
    """A JSON file orpo reads itself (``adapter_config.json``...); a damaged one is a :class:`DamagedFile`.

    Args:
        path: the file.

    Raises:
        DamagedFile: it is empty, not UTF-8 or not valid JSON.
    """
    file = Path(path)
    cause = json_problem(file)
    if cause is not None:
        raise DamagedFile(str(path), cause)
    return json.loads(file.read_text(encoding="utf-8"))
