"""The alignment-handbook's ``dataset_mixture``, read as the handbook reads it, checked before anything loads.

A recipe (or ``--dataset-mixture '{...}'``) gives::

    dataset_mixture:
      datasets:
        - {id: org/name, config: default, split: train, columns: [prompt, chosen, rejected], weight: 0.5}
      seed: 0
      test_split_size: 0.1

Defaults are the handbook's: ``split`` train, ``columns`` all, ``weight`` 1.0 (explicit null: take every row,
unshuffled), ``seed`` 0, no test split.  Unlike the handbook, a key it would ignore (a typo such as
``wieght``) is refused, and a weight above 1 (the handbook's index error) is refused with the entry named.
The field itself stays the mapping as given (``--print-config`` writes it back unchanged);
:func:`parse_mixture` gives the typed view the loader uses.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

KEY = "dataset_mixture"
ENTRY_KEYS = ("id", "config", "split", "columns", "weight")
MIXTURE_KEYS = ("datasets", "seed", "test_split_size")
FORMAT = "{datasets: [{id, config, split, columns, weight}], seed, test_split_size}"


@dataclass(frozen=True)
class MixtureDataset:
    """One entry of ``dataset_mixture.datasets``: a hub id or local path, its config and split, the columns
    kept, and the fraction of its rows taken after a seeded shuffle (None: all rows, not shuffled)."""

    id: str
    config: str | None = None
    split: str = "train"
    columns: tuple[str, ...] | None = None
    weight: float | None = 1.0


@dataclass(frozen=True)
class DatasetMixture:
    """The parsed mixture; ``labels`` name the sources in the data report (the id, with the config and split
    where two entries share an id, as the handbook's recipes do with one dataset's splits)."""

    datasets: tuple[MixtureDataset, ...]
    seed: int = 0
    test_split_size: float | int | None = None

    @property
    def labels(self) -> list[str]:
        ids = [entry.id for entry in self.datasets]
        labels = []
        for entry in self.datasets:
            if ids.count(entry.id) == 1:
                labels.append(entry.id)
            else:
                labels.append(
                    f"{entry.id} ({entry.config}, {entry.split})" if entry.config else f"{entry.id} ({entry.split})"
                )
        return [label if labels.count(label) == 1 else f"{label} #{i}" for i, label in enumerate(labels)]


class MixtureError(ValueError):
    """A malformed ``dataset_mixture``; one line naming the key or entry."""


def _unknown(where: str, keys: Sequence[str], allowed: Sequence[str]) -> MixtureError:
    key = next(k for k in keys if k not in allowed)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return MixtureError(f"{where}: unknown key {key!r}{hint}; the keys are {', '.join(allowed)}")


def _text(where: str, value: Any, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise MixtureError(f"{where} must be a non-empty text, got {value!r}")
    return value


def _entry(where: str, raw: Any) -> MixtureDataset:
    if not isinstance(raw, Mapping):
        raise MixtureError(f"{where} must be a mapping {{id, config, split, columns, weight}}, got {raw!r}")
    keys = [str(k) for k in raw]
    if any(k not in ENTRY_KEYS for k in keys):
        raise _unknown(where, keys, ENTRY_KEYS)
    if raw.get("id") is None:
        raise MixtureError(f"{where} has no id: give a hub dataset id or a local path")
    columns = raw.get("columns")
    if columns is not None:
        if isinstance(columns, str) or not isinstance(columns, Sequence) or not columns:
            raise MixtureError(f"{where}.columns must be a non-empty list of column names, got {columns!r}")
        if not all(isinstance(c, str) and c for c in columns):
            raise MixtureError(f"{where}.columns must be column names, got {list(columns)!r}")
        if len(set(columns)) != len(columns):
            raise MixtureError(f"{where}.columns names a column twice: {list(columns)!r}")
    weight = raw.get("weight", 1.0)
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1):
        raise MixtureError(f"{where}.weight={weight!r}: the fraction of the dataset's rows to take, between 0 and 1")
    return MixtureDataset(
        id=str(_text(f"{where}.id", raw["id"], optional=False)),
        config=_text(f"{where}.config", raw.get("config"), optional=True),
        split=str(_text(f"{where}.split", raw.get("split", "train"), optional=False)),
        columns=tuple(columns) if columns is not None else None,
        weight=None if weight is None else float(weight),
    )


def _test_split_size(value: Any) -> float | int | None:
    """As ``datasets.Dataset.train_test_split``'s ``test_size``: a float is a fraction, an int a row count."""
    where = f"{KEY}.test_split_size"
    if value is None:
        return None
    if isinstance(value, float) and 0 < value < 1:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise MixtureError(f"{where}={value!r}: a fraction between 0 and 1 (exclusive), or a number of rows >= 1")


def parse_mixture(value: Any) -> DatasetMixture:
    """The typed mixture of a ``dataset_mixture`` mapping; :class:`MixtureError` (one line) if malformed."""
    if isinstance(value, DatasetMixture):
        return value
    if not isinstance(value, Mapping) or "datasets" not in value:
        raise MixtureError(f"{KEY} must be a mapping with a 'datasets' key: {FORMAT}")
    keys = [str(k) for k in value]
    if any(k not in MIXTURE_KEYS for k in keys):
        raise _unknown(KEY, keys, MIXTURE_KEYS)
    raw = value["datasets"]
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        raise MixtureError(f"{KEY}.datasets must be a list of dataset entries {{id, config, split, columns, weight}}")
    if not raw:
        raise MixtureError(f"{KEY}.datasets is empty: give at least one {{id: ...}} entry")
    entries = tuple(_entry(f"{KEY}.datasets[{i}]", item) for i, item in enumerate(raw))
    selected = [(i, e.columns) for i, e in enumerate(entries) if e.columns is not None]
    for i, columns in selected[1:]:
        first, first_columns = selected[0]
        if set(columns or ()) != set(first_columns or ()):
            raise MixtureError(
                f"{KEY}.datasets[{i}].columns {list(columns or ())} differ from datasets[{first}].columns "
                f"{list(first_columns or ())}: every dataset of a mixture keeps the same columns"
            )
    seed = value.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MixtureError(f"{KEY}.seed={seed!r}: an integer")
    return DatasetMixture(entries, seed, _test_split_size(value.get("test_split_size")))


def check_with(mixture: Any, others: Mapping[str, Any]) -> None:
    """Refuse ``DataArguments`` that a mixture replaces or contradicts (``others``: field -> value).

    The handbook's script picks ``dataset[dataset_train_split]`` / ``[dataset_test_split]`` from the mixture's
    ``train`` / ``test`` splits, so those two names (its defaults) are accepted and any other refused.
    """
    parsed = parse_mixture(mixture)
    for name in ("dataset_name", "dataset_mixer"):
        if others.get(name):
            raise MixtureError(f"give either {name} or {KEY}, not both")
    if others.get("dataset_config") is not None:
        raise MixtureError(f"dataset_config does not apply to {KEY}: give each entry its own config")
    if others.get("dataset_train_split") not in (None, "train"):
        raise MixtureError(
            f"dataset_train_split={others['dataset_train_split']!r} does not apply to {KEY}: give each entry its "
            "own split (the mixture is the 'train' split)"
        )
    test_split = others.get("dataset_test_split")
    if test_split not in (None, "test"):
        raise MixtureError(
            f"dataset_test_split={test_split!r} does not apply to {KEY}: its eval split is 'test', made by "
            "test_split_size"
        )
    if test_split == "test" and parsed.test_split_size is None:
        raise MixtureError(f"dataset_test_split='test' needs {KEY}.test_split_size (the mixture's eval split)")
    if others.get("streaming"):
        raise MixtureError(f"{KEY} needs the rows counted (weights are fractions of each dataset): drop streaming")
    if others.get("dataset_mixing", "fractions") != "fractions":
        raise MixtureError(f"dataset_mixing applies to dataset_mixer; {KEY}'s weights are fractions")
