"""Several preference sources as one training set, weighted.

Three conventions users bring (the third, the handbook's newer ``dataset_mixture``, at the end): the alignment-handbook's ``dataset_mixer`` ``{source: fraction}`` (take
that fraction of each source's rows, concatenate, shuffle; a fraction is at most 1), and
``datasets.interleave_datasets``' probabilities (draw each row from a source with that probability,
weights normalised, until one source runs out).  Each row keeps its source's name in
:data:`.stream.MIX_COLUMN` and the source's row count in :data:`.stream.READ_COLUMN`, so the data
report counts rows read, mixed in and kept, and the formats found, per source.

Sources may hold any supported format (standard strings, message lists, an implicit prompt) and
different extra columns.  Before mixing, each source is put in one canonical column form: prompt,
chosen and rejected as text (plus ``tools`` as JSON text and ``images`` where the sources have
them).  A source whose texts are not all strings (message lists, mixed types) or that has no
prompt column travels JSON-encoded, marked in :data:`.normalise.ENCODED_COLUMN`; the normaliser
decodes it, so a mixed row is normalised exactly as its source would be alone.  Rendering the texts
(chat templates) needs the tokenizer, which is why the last step waits for preparation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from orpo.config.arguments import MIXINGS
from orpo.config.dataset_mixture import KEY as MIXTURE_KEY
from orpo.config.dataset_mixture import DatasetMixture, MixtureDataset

from .errors import SOURCE_COLUMN, DataError, short, where
from .normalise import ENCODED_COLUMN, TOOLS_COLUMN
from .stream import MIX_COLUMN, READ_COLUMN
from .validate import TEXT_COLUMNS, column_values

logger = logging.getLogger(__name__)

#: Columns a mixed row keeps besides the bookkeeping ones: what preparation reads.
KEPT = (*TEXT_COLUMNS, TOOLS_COLUMN, "images", SOURCE_COLUMN)
#: Row count of a streamed source (not known before it is read).
UNCOUNTED = -1
#: Part of :class:`Canonical`'s ``datasets`` cache fingerprint: bump it when the canonical columns change.
MIX_REVISION = 1

Batch = dict[str, list[Any]]


def check_weights(mixer: Mapping[str, float], mixing: str) -> None:
    """Refuse weights that mix nothing or that the convention does not allow.

    Args:
        mixer: source -> weight.
        mixing: ``"fractions"`` (each weight between 0 and 1) or ``"probabilities"`` (each at least 0).

    Raises:
        DataError: an unknown convention, no sources, a weight out of range, or every weight 0.
    """
    if mixing not in MIXINGS:
        raise DataError(f"dataset_mixing={mixing!r} is not one of {', '.join(MIXINGS)}")
    if not mixer:
        raise DataError("dataset_mixer is empty: give {source: weight}")
    for name, weight in mixer.items():
        if not isinstance(weight, int | float) or weight < 0 or (mixing == "fractions" and weight > 1):
            bound = "between 0 and 1" if mixing == "fractions" else ">= 0"
            raise DataError(f"dataset_mixer[{name!r}]={weight!r}: a {mixing[:-1]} must be a number {bound}")
    if not any(mixer.values()):
        raise DataError("dataset_mixer: every weight is 0, nothing to train on")


def _is_text(feature: Any) -> bool:
    import datasets

    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def needs_encoding(features: Any) -> bool:
    """Whether a source's texts must travel as JSON: any text column not of strings, or no prompt column.

    Args:
        features: the source's ``datasets.Features``; None (a stream not yet read): True.
    """
    if features is None or "prompt" not in features:
        return True
    return not all(_is_text(features[name]) for name in TEXT_COLUMNS if name in features)


def source_format(features: Any) -> str:
    """The format a source's columns show (rows are checked one by one when normalised); for the log.

    Args:
        features: the source's ``datasets.Features``; None: not known before it is read.
    """
    if features is None:
        return "format known once read"
    prompt = "prompt" in features
    if needs_encoding({**features, "prompt": features["prompt"] if prompt else features["chosen"]}):
        return "conversational" if prompt else "implicit_conversational"
    return "standard" if prompt else "implicit_standard"


def _log_sources(mixed: Any, sources: list[tuple[str, Any, int]]) -> None:
    """Per source: its format, rows read and rows mixed in; a warning for a source the mix took nothing from."""
    from collections import Counter

    taken = Counter(column_values(mixed, MIX_COLUMN))
    for name, dataset, rows in sources:
        logger.info(
            "dataset_mixer[%r]: %s, %d rows read, %d mixed in", name, source_format(dataset.features), rows, taken[name]
        )
        if not taken[name]:
            logger.warning(
                "dataset_mixer[%r]: no row of this source is in the mix (with dataset_mixing='probabilities' the mix "
                "ends when the first source runs out); raise its weight",
                name,
            )


def _json_text(value: Any, location: str, column: str) -> str:
    """JSON text of a value; a missing prompt is ``null`` (not a null cell, which would read as an error)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where(location, column)}: {short(value)} cannot be carried into the mix ({err})") from None


class Canonical:
    """Batch function for ``map``: one source's rows -> the canonical mixed columns (picklable).

    Args:
        name: the source's name, in :data:`~orpo.data.stream.MIX_COLUMN` and in locations.
        rows: the source's row count before mixing (:data:`UNCOUNTED` for a stream).
        encode: carry the texts as JSON (:func:`needs_encoding`).
        tools: give the rows a ``tools`` column (some source of the mix has one).
    """

    def __init__(self, name: str, rows: int, encode: bool, tools: bool) -> None:
        self.name, self.rows, self.encode, self.tools = name, rows, encode, tools
        self.revision = MIX_REVISION

    def __call__(self, batch: Batch, indices: list[int]) -> Batch:
        size = len(indices)
        locations = batch.get(SOURCE_COLUMN) or [f"{self.name} row {index}" for index in indices]
        out: Batch = {SOURCE_COLUMN: list(locations)}
        for column in TEXT_COLUMNS:
            values = batch.get(column, [None] * size)
            if self.encode:
                values = [_json_text(v, loc, column) for v, loc in zip(values, locations, strict=True)]
            out[column] = list(values)
        if self.tools:
            out[TOOLS_COLUMN] = [
                v if v is None or isinstance(v, str) else _json_text(v, loc, TOOLS_COLUMN)
                for v, loc in zip(batch.get(TOOLS_COLUMN, [None] * size), locations, strict=True)
            ]
        out[ENCODED_COLUMN] = [self.encode] * size
        out[MIX_COLUMN] = [self.name] * size
        out[READ_COLUMN] = [self.rows] * size
        return out


def _features(tools: bool, images: Any) -> Any:
    import datasets

    text = datasets.Value("string")
    columns: dict[str, Any] = {SOURCE_COLUMN: text, **{name: text for name in TEXT_COLUMNS}}
    if tools:
        columns[TOOLS_COLUMN] = text
    columns.update({ENCODED_COLUMN: datasets.Value("bool"), MIX_COLUMN: text, READ_COLUMN: datasets.Value("int64")})
    if images is not None:
        columns["images"] = images
    return datasets.Features(columns)


def _column_names(dataset: Any, name: str) -> list[str]:
    """A source's columns; for a stream whose features are unknown until read, its first row's keys."""
    names = dataset.column_names
    if names is None:
        first = next(iter(dataset.take(1)), None)
        if first is None:
            raise DataError(f"dataset_mixer[{name!r}]: the source is empty")
        names = list(first)
    return list(names)


def canonical(dataset: Any, name: str, rows: int, tools: bool) -> Any:
    """``dataset`` (one source) in the canonical mixed columns; columns preparation does not read are left out
    (and named in the log).

    Args:
        dataset: the source's ``Dataset`` or ``IterableDataset``.
        name: the source's name.
        rows: its row count before mixing (:data:`UNCOUNTED` for a stream).
        tools: whether the mix has a ``tools`` column.

    Raises:
        DataError: an empty stream, or a value that cannot be carried as JSON.
    """
    import datasets

    names = _column_names(dataset, name)
    features = dataset.features
    left_out = [column for column in names if column not in KEPT]
    if left_out:
        logger.info(
            "dataset_mixer[%r]: column(s) %s are not read by training and are not carried into the mix",
            name,
            ", ".join(left_out),
        )
    images = features["images"] if features is not None and "images" in features else None
    encode = needs_encoding(features)
    function = Canonical(name, rows, encode, tools)
    remove = [column for column in names if column != "images"]
    if isinstance(dataset, datasets.IterableDataset):
        known = images is not None or "images" not in names
        return dataset.map(
            function, with_indices=True, batched=True, remove_columns=remove,
            features=_features(tools, images) if known else None,
        )  # fmt: skip
    return dataset.map(
        function,
        with_indices=True,
        batched=True,
        remove_columns=remove,
        features=_features(tools, images),
        desc=f"Mixing in {name}",
    )


def _check_images(sources: list[tuple[str, Any]]) -> None:
    """Image rows mix only with image rows: a text-only row has no image for the vision model."""
    having = [name for name, dataset in sources if "images" in _column_names(dataset, name)]
    if having and len(having) < len(sources):
        lacking = next(name for name, _ in sources if name not in having)
        raise DataError(
            f"dataset_mixer: {having[0]!r} has an images column and {lacking!r} has none; mix image sources only "
            "with image sources"
        )


def _prepared(sources: list[tuple[str, Any, int]]) -> list[Any]:
    """Each (name, rows, rows the source had) in the canonical columns, with ``tools`` where any source has it."""
    _check_images([(name, dataset) for name, dataset, _ in sources])
    tools = any(TOOLS_COLUMN in _column_names(dataset, name) for name, dataset, _ in sources)
    return [canonical(dataset, name, rows, tools) for name, dataset, rows in sources]


def _count(dataset: Any) -> int:
    import datasets

    return UNCOUNTED if isinstance(dataset, datasets.IterableDataset) else len(dataset)


def mix(
    mixer: Mapping[str, float], mixing: str, load: Callable[[str], tuple[Any, Any]], seed: int = 42
) -> tuple[Any, Any]:
    """(mixed train data, concatenated eval data or None); ``load(source)`` gives one source's (train, eval).

    Sources of weight 0 are not loaded.

    Args:
        mixer: source -> weight.
        mixing: ``"fractions"`` (the first ``weight * rows`` rows of each, concatenated and shuffled) or
            ``"probabilities"`` (rows drawn with the normalised weights until one source runs out).
        load: source -> its (train, eval or None) data.
        seed: the shuffle's (or the draw's) seed.

    Raises:
        DataError: bad weights (:func:`check_weights`), fractions of a stream, or sources that cannot be
            mixed (images in some only).
    """
    import datasets

    check_weights(mixer, mixing)
    trains: list[tuple[str, Any, int]] = []
    evals: list[tuple[str, Any, int]] = []
    for name, weight in mixer.items():
        if not weight:
            continue
        train, evaluation = load(name)
        rows = _count(train)
        if mixing == "fractions":
            if isinstance(train, datasets.IterableDataset):
                raise DataError(
                    f"dataset_mixer[{name!r}]: fractions need the rows counted; with --streaming use "
                    "dataset_mixing='probabilities'"
                )
            train = train.select(range(int(weight * rows)))
            logger.info("dataset_mixer[%r]: %d of %d rows taken (fraction %s)", name, len(train), rows, weight)
        trains.append((name, train, rows))
        if evaluation is not None:
            evals.append((name, evaluation, _count(evaluation)))
    parts = _prepared(trains)
    try:
        if mixing == "fractions":
            mixed = datasets.concatenate_datasets(parts).shuffle(seed=seed)
        else:
            total = sum(w for w in mixer.values() if w)
            weights = [w / total for w in mixer.values() if w]
            mixed = datasets.interleave_datasets(parts, probabilities=weights, seed=seed)
        evaluation = datasets.concatenate_datasets(_prepared(evals)) if evals else None
    except ValueError as err:  # pragma: no cover - canonical() gives every source the same columns and types
        raise DataError(f"dataset_mixer: the sources cannot be combined ({err})") from None
    if not isinstance(mixed, datasets.IterableDataset):
        _log_sources(mixed, trains)
    return mixed, evaluation


# ---- the alignment-handbook's dataset_mixture: the same mix, row for row as its get_dataset ----------------


def take(dataset: Any, entry: MixtureDataset, seed: int) -> Any:
    """``int(weight * rows)`` rows after a seeded shuffle; all rows, in order, without a weight.

    Args:
        dataset: one entry's data.
        entry: the ``dataset_mixture`` entry (its ``weight``).
        seed: the mixture's seed.
    """
    if entry.weight is None:
        return dataset
    return dataset.shuffle(seed=seed).select(range(int(len(dataset) * entry.weight)))


def load_mixture(mixture: DatasetMixture, load: Callable[[MixtureDataset], Any]) -> tuple[Any, Any]:
    """(train data, eval data or None); ``load(entry)`` gives one entry's split with its columns selected.

    Each entry is cut to its weight (:func:`take`), the parts are concatenated and shuffled with the mixture's
    seed, and ``test_split_size`` (when set) splits the eval data off.

    Args:
        mixture: the parsed ``dataset_mixture``.
        load: entry -> its data.

    Raises:
        DataError: an entry that cannot be loaded (named by its index), no rows taken, or a ``test_split_size``
            that does not fit.
    """
    parts: dict[str, Any] = {}
    for index, (label, entry) in enumerate(zip(mixture.labels, mixture.datasets, strict=True)):
        try:
            data = load(entry)
        except (DataError, FileNotFoundError) as err:
            raise DataError(f"{MIXTURE_KEY}.datasets[{index}]: {err}") from None
        parts[label] = take(data, entry, mixture.seed)
        unread = [c for c in entry.columns or () if c not in KEPT and c in parts[label].column_names]
        if unread:
            logger.warning(
                "%s.datasets[%d] (%s): column(s) %s kept but not read by orpo (it trains on %s)",
                MIXTURE_KEY, index, label, ", ".join(unread), ", ".join(c for c in KEPT if not c.startswith("_")),
            )  # fmt: skip
        logger.info(
            "%s: %s: %d rows read, %d taken (weight %s)", MIXTURE_KEY, label, len(data), len(parts[label]), entry.weight
        )
    total = sum(len(part) for part in parts.values())
    if total == 0:
        raise DataError(f"{MIXTURE_KEY}: no rows taken (every dataset is empty or has weight 0)")
    try:
        # weight 1 in mix(): each part is already cut to its weight; mix concatenates and shuffles with the seed
        train, _ = mix(dict.fromkeys(parts, 1.0), "fractions", lambda label: (parts[label], None), mixture.seed)
    except DataError as err:
        raise DataError(str(err).replace("dataset_mixer", MIXTURE_KEY, 1)) from None
    if mixture.test_split_size is None:
        return train, None
    try:
        split = train.train_test_split(test_size=mixture.test_split_size, seed=mixture.seed)
    except ValueError as err:  # datasets: a split would be empty, or more test rows than rows
        raise DataError(
            f"{MIXTURE_KEY}.test_split_size={mixture.test_split_size!r} does not fit the mixture's {total} rows ({err})"
        ) from None
    return split["train"], split["test"]
