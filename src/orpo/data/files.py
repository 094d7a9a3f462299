"""Local files and folders: which files form which split, and loading them with ``datasets``."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import SOURCE_COLUMN, DataError
from .scan import DATA_EXTENSIONS, DataFile, TypeTracker, diagnose_json, extension, prescan

logger = logging.getLogger(__name__)


#: datasets' own metadata files, never rows.
_NOT_DATA = ("dataset_info.json", "dataset_dict.json", "state.json")


#: Canonical split name -> names accepted for it in file and folder names.
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev", "eval", "evaluation"),
    "test": ("test", "testing"),
}


def glob_root(pattern: str) -> str:
    """The folder a glob pattern starts from: its path parts before the first one with ``*``, ``?`` or ``[``.

    Args:
        pattern: a path with wildcards (``data/*/train-*.jsonl``); ``"."`` when the first part has one.
    """
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if any(char in part for char in "*?["):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def files_in_folder(folder: Path) -> dict[str, list[DataFile]]:
    """The data files under ``folder`` (recursively; hidden files and ``datasets``' metadata skipped), by split.

    Args:
        folder: the data folder.

    Raises:
        DataError: no data files, or files that name a split mixed with files that do not.
    """
    found: list[Path] = []
    others: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name in _NOT_DATA:
                continue
            full = Path(root) / name
            if extension(full) in DATA_EXTENSIONS:
                found.append(full)
            elif name not in ("README.md", "LICENSE", "LICENSE.md"):
                others.append(str(full.relative_to(folder)))
    if not found:
        extra = f" (found only: {', '.join(others[:5])})" if others else ""
        raise DataError(f"{folder}: no data files ({', '.join(DATA_EXTENSIONS)}) in this folder{extra}")
    return assign_splits(sorted(found), folder, str(folder))


def _split_of(relative: Path) -> str | None:
    """The split a file belongs to from its name, then its folders (innermost first)."""
    candidates = [relative.name.rsplit(".", 1)[0], *reversed(relative.parent.parts)]
    for candidate in candidates:
        lowered = candidate.lower()
        for canonical, aliases in SPLIT_ALIASES.items():
            for alias in aliases:
                if re.search(rf"(?:^|[-_. 0-9]){alias}(?:$|[-_. 0-9])", lowered):
                    return canonical
    return None


def assign_splits(files: list[Path], root: Path, describe: str) -> dict[str, list[DataFile]]:
    """Split name -> files, by each file's name, then its folders (:data:`SPLIT_ALIASES`); none named: all train.

    Args:
        files: the data files.
        root: the folder their names are read relative to (folders above it do not count).
        describe: what the files are, for the error (the folder or pattern given).

    Raises:
        DataError: some files name a split and others do not.
    """
    by_split: dict[str, list[DataFile]] = {}
    unassigned = []
    for file in files:
        try:
            relative = file.relative_to(root)
        except ValueError:
            relative = Path(file.name)
        name = _split_of(relative)
        if name is None:
            unassigned.append(file)
        by_split.setdefault(name or "train", []).append(DataFile.of(file, str(file)))
    order = list(SPLIT_ALIASES)
    by_split = dict(sorted(by_split.items(), key=lambda item: order.index(item[0])))
    if unassigned and len(unassigned) < len(files):
        assigned = [f for f in files if f not in unassigned]
        raise DataError(
            f"{describe}: {', '.join(str(f) for f in unassigned[:3])} belong(s) to no split while "
            f"{', '.join(str(f) for f in assigned[:3])} do; name every file (or folder) by its split "
            "(train / validation / test) or pass the files you mean"
        )
    return by_split


def load_local_files(
    by_split: dict[str, list[DataFile]], describe: str, cache_dir: str | None, text_columns: frozenset[str]
) -> dict[str, Any]:
    """Split name -> ``datasets.Dataset`` of its files, each row located (file and line) in ``_orpo_source``.

    Every file is scanned first (:func:`~orpo.data.scan.prescan`), so a bad line is named before ``datasets``
    reads it.

    Args:
        by_split: split name -> its files (:func:`assign_splits`).
        describe: what the files are; unused.
        cache_dir: the ``datasets`` cache folder; None: its default.
        text_columns: the columns orpo reads as text (mixed types in them are errors naming the row).

    Raises:
        DataError: a file that cannot be read, files of a split with different columns, or a split with no rows.
    """
    out = {}
    for split, files in by_split.items():
        for file in files:
            prescan(file)
        _check_same_columns(files)
        live = [file for file in files if file.kind != "empty" and file.rows != 0]
        if not live:
            names = ", ".join(file.display for file in files)
            raise DataError(f"{split} data is empty: no rows in {names}")
        segments: list[tuple[Any, list[str]]] = []
        group: list[DataFile] = []
        tracker = TypeTracker(text_columns)
        for file in live:
            if group and file.group != group[0].group:
                segments.append(_load_segment(group, cache_dir, tracker, sum(len(loc) for _, loc in segments)))
                group = []
            group.append(file)
        segments.append(_load_segment(group, cache_dir, tracker, sum(len(loc) for _, loc in segments)))
        out[split] = _with_locations(segments[0] if len(segments) == 1 else _concatenate(segments, split, live))
    return out


def _check_same_columns(files: list[DataFile]) -> None:
    first = next((file for file in files if file.columns is not None), None)
    for file in files:
        if file.columns is not None and first is not None and set(file.columns) != set(first.columns or ()):
            raise DataError(
                f"{file.display}: columns ({', '.join(file.columns)}) differ from those of {first.display} "
                f"({', '.join(first.columns or ())}); every file of a split needs the same columns"
            )


def _load_segment(files: list[DataFile], cache_dir: str | None, tracker: TypeTracker, start_row: int) -> Any:
    """Load files of one kind with one datasets builder call, then attach row locations."""
    import datasets

    builder, kwargs = _builder_of(files)
    paths = [str(file.path.resolve()) for file in files]

    def load(**extra: Any) -> Any:
        return datasets.load_dataset(builder, data_files=paths, split="train", cache_dir=cache_dir, **kwargs, **extra)

    try:
        with _json_builder_quiet():
            dataset = _load_json_strictly(load, files, tracker, start_row) if builder == "json" else load()
    except DataError:
        raise
    except Exception as err:
        names = ", ".join(file.display for file in files[:3])
        cause = err.__cause__ or err
        raise DataError(f"{names}: could not be loaded ({type(cause).__name__}: {cause})") from None
    return dataset, _row_locations(files, dataset, paths)


def _builder_of(files: list[DataFile]) -> tuple[str, dict[str, Any]]:
    """The ``datasets`` builder for files of one kind, and its options."""
    import datasets

    kind = files[0].kind
    if kind in ("jsonl", "json_list"):
        return "json", {}
    if kind == "json_object":
        return "json", {"field": "data"}
    if kind in ("csv", "tsv"):
        # Every CSV cell is text: no type guessing ("42" stays "42"), an empty cell is "".
        columns = files[0].columns or []
        return "csv", {
            "features": datasets.Features({name: datasets.Value("string") for name in columns}),
            "na_filter": False,
            "sep": "\t" if kind == "tsv" else ",",
        }
    return "parquet", {}


@contextlib.contextmanager
def _json_builder_quiet() -> Iterator[None]:
    """The json builder logs its own (less precise) error before raising; orpo's scan names the spot instead."""
    builder_logger = logging.getLogger("datasets.packaged_modules.json.json")
    level = builder_logger.level
    builder_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        builder_logger.setLevel(level)


def _load_json_strictly(load: Callable[..., Any], files: list[DataFile], tracker: TypeTracker, start_row: int) -> Any:
    """JSON is read strictly first: a column whose rows mix types (text and numbers, text and lists) stops the
    builder, and a scan names the row.  Only when the mixing is confined to columns orpo does not read is the
    file read again with datasets' JSON-typed columns: in those, a text value like " 5" would come back as the
    number 5."""
    try:
        dataset = load(on_mixed_types=None)
    except Exception:
        row = start_row
        for file in files:
            row += diagnose_json(file, tracker, row)
        dataset = load()  # mixed types only in columns orpo does not read
    mixed = [
        name for name in tracker.columns if name in dataset.column_names and _is_json_feature(dataset.features[name])
    ]
    if mixed:  # pragma: no cover - the scan above reports these first
        raise DataError(f"{files[0].display}: column {mixed[0]!r} mixes types across rows; use text or messages")
    return dataset


def _row_locations(files: list[DataFile], dataset: Any, paths: list[str]) -> list[str]:
    """Where each loaded row came from (file and record); file-level labels where the counts disagree."""
    locations: list[str] = []
    for file in files:
        if file.locations is None:
            count = file.rows if file.rows is not None else len(dataset)
            file.locations = [f"{file.display}, record {i}" for i in range(count)]
        locations.extend(file.locations)
    if len(locations) != len(dataset):
        logger.debug(
            "row locations unavailable for %s: %d rows loaded, %d counted", paths, len(dataset), len(locations)
        )
        locations = [
            f"{files[0].display}" + (" ..." if len(files) > 1 else "") + f", record {i}" for i in range(len(dataset))
        ]
    return locations


def _is_json_feature(feature: Any) -> bool:
    import datasets

    json_type = getattr(datasets, "Json", None)
    return json_type is not None and isinstance(feature, json_type)


def _concatenate(segments: list[tuple[Any, list[str]]], split: str, files: list[DataFile]) -> tuple[Any, list[str]]:
    import datasets

    try:
        first = segments[0][0]
        parts = [first]
        for segment, _ in segments[1:]:
            if segment.features != first.features and set(segment.column_names) == set(first.column_names):
                segment = segment.cast(first.features)  # e.g. large_string (pandas' parquet) vs string
            parts.append(segment)
        dataset = datasets.concatenate_datasets(parts)
    except Exception as err:
        raise DataError(
            f"{split} data: its files ({', '.join(f.display for f in files[:4])}) have different columns or types "
            f"and cannot be combined ({err})"
        ) from None
    return dataset, [location for _, segment_locations in segments for location in segment_locations]


def _with_locations(loaded: tuple[Any, list[str]]) -> Any:
    dataset, locations = loaded
    values = [f"{location} (row {index})" for index, location in enumerate(locations)]
    if SOURCE_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(SOURCE_COLUMN)
    return dataset.add_column(SOURCE_COLUMN, values)
