"""Load preference data from wherever users keep it, into ``datasets`` with canonical columns.

``load_preference_data(source, ...)`` returns a ``datasets.DatasetDict`` whose splits are named
``train`` (and ``validation`` / ``test`` where present, or ``valid_split``) and whose columns
are renamed to ``prompt`` / ``chosen`` / ``rejected`` (+ ``images``).  Sources:

- a local ``.jsonl`` / ``.json`` (a list, or ``{"data": [...]}``) / ``.csv`` / ``.tsv`` /
  ``.parquet`` file (the text formats also compressed: ``.jsonl.gz``, ``.csv.bz2``, ``.json.xz``,
  ``.tsv.zst``), a folder of such files, a train/validation/test layout (files or sub-folders
  named by split), or a glob;
- a folder written by ``datasets.save_to_disk``, or a dataset repository folder (a README with
  ``configs``);
- a hub dataset id (``org/name``, with ``split`` and ``subset``), through ``datasets.load_dataset``;
- an in-memory ``datasets.Dataset`` / ``DatasetDict``, a list of row dicts, a dict of columns,
  or a pandas DataFrame.

Local files are read by ``datasets``' own builders, so they are memory-mapped Arrow files and
every later ``map`` (normalisation, tokenization) is cached.  Each row of a local file keeps its
location ("data/train.jsonl, line 7 (row 6)") in the ``_orpo_source`` column, and problems the
builders trip on (malformed JSON, bad UTF-8, ragged CSV) are found again by a precise scan that
names the file, line and column.
"""

from __future__ import annotations

import glob as globlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orpo.data.images import with_storable_images

from .errors import SOURCE_COLUMN, DataError
from .files import SPLIT_ALIASES, assign_splits, files_in_folder, glob_root, load_local_files
from .scan import DATA_EXTENSIONS, DataFile, extension
from .validate import check_dataset, check_python_columns, check_python_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ColumnMapping:
    """Which source column holds the prompt, the chosen and rejected completions, and images.

    ``None`` means the default: chosen -> ``chosen``, else ``text`` (AutoTrain's ``text_column``
    default); prompt -> ``prompt`` if present (optional: the prompt may be implicit); rejected ->
    ``rejected``; images -> ``images`` or ``image`` if present.

    Attributes:
        prompt: the source column of the prompt; None: ``prompt`` if present.
        chosen: the source column of the chosen completion; None: ``chosen``, else ``text``.
        rejected: the source column of the rejected completion; None: ``rejected``.
        images: the source column of the images; None: ``images`` or ``image`` if present.
    """

    prompt: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    images: str | None = None

    @classmethod
    def from_autotrain(
        cls,
        prompt_text_column: str | None = None,
        text_column: str | None = None,
        rejected_text_column: str | None = None,
        image_column: str | None = None,
    ) -> ColumnMapping:
        """AutoTrain's names for the same mapping.

        Args:
            prompt_text_column: the prompt column (``prompt``).
            text_column: the chosen completion's column (``chosen``).
            rejected_text_column: the rejected completion's column (``rejected``).
            image_column: the images' column (``images``).
        """
        return cls(prompt=prompt_text_column, chosen=text_column, rejected=rejected_text_column, images=image_column)

    def resolve(self, columns: Sequence[str], location: str = "data") -> dict[str, str]:
        """{canonical name: source column}; errors list the available columns.

        Args:
            columns: the source's column names.
            location: what the data is, for error messages.

        Raises:
            DataError: a named column is missing, there is no chosen or rejected column, or one column
                is mapped twice.
        """
        available = list(columns)
        shown = ", ".join(c for c in available if c != SOURCE_COLUMN) or "(none)"
        flags = {
            "prompt": "prompt_text_column / --prompt-text-column",
            "chosen": "text_column / --text-column",
            "rejected": "rejected_text_column / --rejected-text-column",
            "images": "image_column / --image-column",
        }
        defaults = {
            "prompt": ("prompt",),
            "chosen": ("chosen", "text"),
            "rejected": ("rejected",),
            "images": ("images", "image"),
        }
        resolved: dict[str, str] = {}
        for target in ("prompt", "chosen", "rejected", "images"):
            explicit = getattr(self, target)
            if explicit is not None:
                if explicit not in available:
                    raise DataError(
                        f"{location}: no column {explicit!r} (given as the {target} column, {flags[target]}); "
                        f"available columns: {shown}"
                    )
                resolved[target] = explicit
                continue
            found = next((name for name in defaults[target] if name in available), None)
            if found is not None:
                resolved[target] = found
            elif target in ("chosen", "rejected"):
                tried = " or ".join(repr(name) for name in defaults[target])
                raise DataError(
                    f"{location}: no {target} column ({tried}); available columns: {shown}; "
                    f"name yours with {flags[target]}"
                )
        sources = list(resolved.values())
        for name in set(sources):
            if sources.count(name) > 1:
                roles = [target for target, source in resolved.items() if source == name]
                raise DataError(f"{location}: column {name!r} is mapped to both {' and '.join(roles)}")
        return resolved


def apply_column_mapping(dataset: Any, mapping: ColumnMapping | None, location: str = "data") -> Any:
    """Rename the mapped columns to prompt/chosen/rejected/images.

    A column already named like a target but not mapped to it (e.g. ``chosen`` when
    ``text_column="answer_a"``) is removed so the mapped one can take its name.  A prompt
    column that is null in every row is removed (the prompt is then implicit).

    Args:
        dataset: a ``datasets.Dataset`` with the source's columns.
        mapping: which source column holds what; None: the defaults (see :class:`ColumnMapping`).
        location: what the data is, for error messages.

    Raises:
        DataError: the mapping does not fit the columns (see :meth:`ColumnMapping.resolve`).
    """
    resolved = (mapping or ColumnMapping()).resolve(dataset.column_names, location)
    renames = {source: target for target, source in resolved.items() if source != target}
    clashes = [target for target in renames.values() if target in dataset.column_names and target not in renames]
    if clashes:
        logger.info("%s: replacing column(s) %s by the mapped ones", location, ", ".join(clashes))
        dataset = dataset.remove_columns(clashes)
    if renames:
        dataset = dataset.rename_columns(renames)
    prompt = dataset.features.get("prompt") if "prompt" in dataset.column_names else None
    if prompt is not None and getattr(prompt, "dtype", None) == "null":
        dataset = dataset.remove_columns("prompt")
    return dataset


def load_preference_data(
    source: Any,
    *,
    split: str | None = None,
    subset: str | None = None,
    columns: ColumnMapping | dict[str, str] | None = None,
    valid_split: str | None = None,
    cache_dir: str | None = None,
    keep_columns: Sequence[str] | None = None,
) -> Any:
    """Load ``source`` into a ``DatasetDict`` with prompt/chosen/rejected columns (see module doc).

    ``split``: the training split (default ``train``, or the only split); it is returned as
    ``train``.  ``valid_split``: a split returned under that name for evaluation; without it,
    ``validation`` and ``test`` splits are returned when the source has them.  Slices such as
    ``train[:1000]`` or ``train[:10%]`` are accepted.  ``subset``: the dataset's config name.
    ``keep_columns``: only these source columns, selected before ``columns`` maps them (the
    alignment-handbook's ``dataset_mixture`` ``columns``).

    Args:
        source: a path, glob, hub dataset id, Dataset/DatasetDict, list of row dicts, dict of columns or DataFrame.
        split: the training split, slices allowed; None: ``train`` or the only split.
        subset: the dataset's config name (hub datasets and dataset repository folders).
        columns: which source columns hold prompt/chosen/rejected/images (a :class:`ColumnMapping` or its
            fields as a dict); None: the defaults.
        valid_split: the split to return for evaluation, under this name; None: ``validation`` / ``test``.
        cache_dir: the ``datasets`` cache for local files and hub datasets; None: ``datasets``' default.
        keep_columns: the only source columns to keep; None: all.

    Raises:
        DataError: the source cannot be found or read, a split is missing, or the columns do not fit.
    """
    import datasets

    mapping = ColumnMapping(**columns) if isinstance(columns, dict) else columns
    if isinstance(source, list | dict):  # images given as paths, bytes and PIL images in one column
        source = with_storable_images(source, mapping.images if mapping is not None else None)
    splits, describe = _load_raw(source, split, subset, valid_split, cache_dir, _text_columns(mapping))
    out: dict[str, Any] = {}
    train_name = _pick_split(splits, split, describe)
    out["train"] = _slice(splits[train_name], split if train_name != split else None)
    if valid_split:
        valid_name = _pick_split(splits, valid_split, describe)
        out[valid_split] = _slice(splits[valid_name], valid_split if valid_name != valid_split else None)
    else:
        for name in ("validation", "test"):
            if name in splits and name != train_name:
                out[name] = splits[name]
    for name, dataset in list(out.items()):
        where = f"{describe} [{name}]" if len(splits) > 1 or name != "train" else describe
        if keep_columns is not None:
            dataset = select_source_columns(dataset, keep_columns, where)
        dataset = apply_column_mapping(dataset, mapping, where)
        check_dataset(dataset, name)
        out[name] = dataset
    return datasets.DatasetDict(out)


def select_source_columns(dataset: Any, names: Sequence[str], location: str = "data") -> Any:
    """Only the columns ``names`` (and each row's location); a missing one is an error listing those there.

    Args:
        dataset: a ``datasets.Dataset``.
        names: the source columns to keep.
        location: what the data is, for error messages.

    Raises:
        DataError: a column of ``names`` is missing.
    """
    missing = [name for name in names if name not in dataset.column_names]
    if missing:
        shown = ", ".join(c for c in dataset.column_names if c != SOURCE_COLUMN) or "(none)"
        raise DataError(f"{location}: no column {', '.join(map(repr, missing))} to keep; available columns: {shown}")
    located = [SOURCE_COLUMN] if SOURCE_COLUMN in dataset.column_names and SOURCE_COLUMN not in names else []
    return dataset.select_columns([*names, *located])


def _text_columns(mapping: ColumnMapping | None) -> frozenset[str]:
    """Source columns that will hold prompt/chosen/rejected (checked for types while loading files)."""
    mapping = mapping or ColumnMapping()
    chosen = (mapping.chosen,) if mapping.chosen else ("chosen", "text")
    return frozenset((mapping.prompt or "prompt", *chosen, mapping.rejected or "rejected"))


def _pick_split(splits: dict[str, Any], wanted: str | None, describe: str) -> str:
    """The key of the split asked for (exact, then without a slice, then by alias)."""
    if wanted is not None and wanted in splits:
        return wanted  # e.g. 'train[:10%]' already sliced by datasets.load_dataset
    if wanted is None:
        if "train" in splits:
            return "train"
        if len(splits) == 1:
            return next(iter(splits))
        raise DataError(f"{describe}: no 'train' split; splits: {', '.join(splits)}; choose one with --split")
    name, _ = _parse_split(wanted)
    if name in splits:
        return name
    canonical = _canonical_split(name)
    if canonical in splits:
        return canonical
    raise DataError(f"{describe}: no split {name!r}; splits: {', '.join(splits)}")


_SLICE = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\]$")


def _parse_split(text: str) -> tuple[str, slice | None]:
    match = _SLICE.match(text.strip())
    if not match:
        return text.strip(), None
    return match["name"], slice(match["start"], match["stop"])


def _slice(dataset: Any, wanted: str | None) -> Any:
    """Apply a 'name[start:stop]' slice (absolute or percent) to a local split."""
    if wanted is None:
        return dataset
    _, sl = _parse_split(wanted)
    if sl is None:
        return dataset
    n = len(dataset)

    def bound(text: str | None) -> int | None:
        if text is None:
            return None
        if text.endswith("%"):
            return round(int(text[:-1]) * n / 100)
        return int(text)

    indices = range(n)[slice(bound(sl.start), bound(sl.stop))]
    return dataset.select(indices)


def _canonical_split(name: str) -> str:
    lowered = name.lower()
    for canonical, aliases in SPLIT_ALIASES.items():
        if lowered in aliases:
            return canonical
    return name


def _load_raw(
    source: Any,
    split: str | None,
    subset: str | None,
    valid_split: str | None,
    cache_dir: str | None,
    text_columns: frozenset[str],
) -> tuple[dict[str, Any], str]:
    """(splits by name, a description of the source for messages)."""
    import datasets

    if isinstance(source, datasets.DatasetDict):
        return dict(source), "dataset"
    if isinstance(source, datasets.Dataset):
        return {"train": source}, "dataset"
    if isinstance(source, list):
        return {"train": dataset_from_rows(source)}, "data"
    if isinstance(source, dict):
        if source and all(isinstance(value, datasets.Dataset) for value in source.values()):
            return dict(source), "dataset"
        return {"train": dataset_from_columns(source)}, "data"
    if type(source).__name__ == "DataFrame" and hasattr(source, "to_dict"):
        return {"train": dataset_from_pandas(source)}, "DataFrame"
    if not isinstance(source, str | os.PathLike):
        raise DataError(
            f"unsupported data source of type {type(source).__name__}: give a path, a glob, a dataset id, a "
            "datasets.Dataset/DatasetDict, a list of row dicts or a dict of columns"
        )
    text = os.path.expanduser(os.fspath(source))
    path = Path(text)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _load_from_disk(path), text
        if subset is not None or _is_dataset_repo(path):
            return _load_with_datasets(text, subset, split, valid_split, cache_dir), text
        return load_local_files(files_in_folder(path), text, cache_dir, text_columns), text
    if path.is_file():
        return load_local_files({"train": [DataFile.of(path, text)]}, text, cache_dir, text_columns), text
    if any(char in text for char in "*?["):
        matches = sorted(p for p in globlib.glob(text, recursive=True) if Path(p).is_file())
        data = [Path(p) for p in matches if extension(Path(p)) in DATA_EXTENSIONS]
        if not data:
            found = f" (it matches only {', '.join(matches[:5])})" if matches else ""
            raise DataError(f"{text}: no data file ({', '.join(DATA_EXTENSIONS)}) matches this pattern{found}")
        root = Path(glob_root(text))
        return load_local_files(assign_splits(data, root, text), text, cache_dir, text_columns), text
    if extension(path) in DATA_EXTENSIONS or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise DataError(f"{text}: no such file or folder")
    return _load_with_datasets(text, subset, split, valid_split, cache_dir), text


def stream_from_hub(path: str, subset: str | None, split: str | None) -> Any:
    """A hub dataset's split as a ``datasets.IterableDataset`` (columns are mapped as the rows are prepared).

    Args:
        path: the hub dataset id.
        subset: the dataset's config name, or None.
        split: the split to stream; None: ``train``.

    Raises:
        DataError: the dataset cannot be streamed.
    """
    import datasets

    try:
        return datasets.load_dataset(path, name=subset, split=split or "train", streaming=True)
    except (ConnectionError, FileNotFoundError, ValueError) as err:
        raise DataError(f"{path}: could not stream this dataset ({type(err).__name__}: {err})") from None


def dataset_from_rows(rows: list[Any], split: str = "train") -> Any:
    """A list of row dicts -> Dataset, with row-level type errors named before Arrow sees them.

    Args:
        rows: the rows, one dict each.
        split: the split's name in error messages.

    Raises:
        DataError: a row has a bad type, or the rows do not fit one table.
    """
    import datasets

    check_python_rows(rows, split)
    try:
        return datasets.Dataset.from_list(rows)
    except Exception as err:  # pyarrow type clashes inside nested values
        raise DataError(
            f"{split} data: the rows could not be stored as a table ({type(err).__name__}: {err})"
        ) from None


def dataset_from_pandas(frame: Any, split: str = "train") -> Any:
    """A pandas DataFrame -> Dataset; a column name used twice is an error (one of them would be lost).

    Args:
        frame: the DataFrame (its index is not kept).
        split: the split's name in error messages.

    Raises:
        DataError: a column name is used twice.
    """
    import datasets

    names = [str(name) for name in frame.columns]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(
            f"{split} data: the DataFrame has more than one column named {', '.join(map(repr, repeated))}; "
            "rename them so each column has its own name"
        )
    return datasets.Dataset.from_pandas(frame, preserve_index=False)


def dataset_from_columns(columns: dict[str, Any], split: str = "train") -> Any:
    """A dict of column lists (TRL's docs' format) -> Dataset.

    Args:
        columns: column name -> one value per row.
        split: the split's name in error messages.

    Raises:
        DataError: a column has a bad type or length, or the columns do not fit one table.
    """
    import datasets

    check_python_columns(columns, split)
    try:
        return datasets.Dataset.from_dict(columns)
    except Exception as err:
        raise DataError(
            f"{split} data: the columns could not be stored as a table ({type(err).__name__}: {err})"
        ) from None


def _load_from_disk(path: Path) -> dict[str, Any]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DataError(f"{path}: could not load the saved dataset ({type(err).__name__}: {err})") from None
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded)
    return {"train": loaded}


def _is_dataset_repo(path: Path) -> bool:
    """A folder laid out as a hub dataset repository (README.md whose YAML header has configs)."""
    readme = path / "README.md"
    if not readme.is_file():
        return False
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return False
    header = text.split("---", 2)[1] if text.count("---") >= 2 else ""
    return bool(re.search(r"^(configs|dataset_info):", header, flags=re.MULTILINE))


def _load_with_datasets(
    path: str, subset: str | None, split: str | None, valid_split: str | None, cache_dir: str | None
) -> dict[str, Any]:
    """A hub dataset id or a dataset repository folder, through ``datasets.load_dataset``."""
    import datasets

    def load(which: str | None) -> Any:
        try:
            return datasets.load_dataset(path, name=subset, split=which, cache_dir=cache_dir)
        except ConnectionError as err:
            raise DataError(
                f"{path}: could not reach the hub to load this dataset ({err}); check the id, your connection, and "
                "HF_DATASETS_OFFLINE / HF_HUB_OFFLINE"
            ) from None
        except FileNotFoundError as err:
            raise DataError(
                f"{path}: not a local file or folder, and not a dataset on the hub ({type(err).__name__}: {err})"
            ) from None
        except ValueError as err:  # unknown config or split
            raise DataError(f"{path}: {err}") from None
        except Exception as err:
            if type(err).__name__ in ("DatasetNotFoundError", "RepositoryNotFoundError", "HfHubHTTPError"):
                raise DataError(f"{path}: dataset not found ({err})") from None
            raise

    if split is None and valid_split is None:
        loaded = load(None)
        return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    # Keyed by the exact split strings asked for: slices ("train[:10%]") are applied by datasets.
    out = {split or "train": load(split or "train")}
    if valid_split:
        out[valid_split] = load(valid_split)
    return out
