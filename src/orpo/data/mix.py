"""Several preference sources as one training set, weighted.

Two conventions users bring: the alignment-handbook's ``dataset_mixer`` ``{source: fraction}`` (take
that fraction of each source's rows, concatenate, shuffle; a fraction is at most 1), and
``datasets.interleave_datasets``' probabilities (draw each row from a source with that probability,
weights normalised, until one source runs out).  Each row keeps its source's name in
:data:`.stream.MIX_COLUMN`, so the data report counts rows read and kept per source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from orpo.config.arguments import MIXINGS

from .errors import SOURCE_COLUMN, DataError
from .stream import MIX_COLUMN
from .validate import TEXT_COLUMNS

#: Columns a mixed row keeps: what preparation reads (other columns differ between sources).
KEPT = (*TEXT_COLUMNS, "images", SOURCE_COLUMN)


def check_weights(mixer: Mapping[str, float], mixing: str) -> None:
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


def _labelled(dataset: Any, name: str) -> Any:
    """Only the columns preparation reads, plus the source's name (and a location where loading kept none)."""
    import datasets

    streamed = isinstance(dataset, datasets.IterableDataset)
    names = dataset.column_names or []
    if not streamed and SOURCE_COLUMN not in names:
        dataset = dataset.add_column(SOURCE_COLUMN, [f"{name} row {i}" for i in range(len(dataset))])
    dataset = dataset.remove_columns([c for c in names if c not in KEPT])
    if streamed:
        return dataset.map(lambda batch: {MIX_COLUMN: [name] * len(next(iter(batch.values())))}, batched=True)
    return dataset.add_column(MIX_COLUMN, [name] * len(dataset))


def mix(
    mixer: Mapping[str, float], mixing: str, load: Callable[[str], tuple[Any, Any]], seed: int = 42
) -> tuple[Any, Any]:
    """(mixed train data, concatenated eval data or None); ``load(source)`` gives one source's (train, eval)."""
    import datasets

    check_weights(mixer, mixing)
    trains, evals = [], []
    for name, weight in mixer.items():
        if not weight:
            continue
        train, evaluation = load(name)
        if mixing == "fractions":
            if isinstance(train, datasets.IterableDataset):
                raise DataError(
                    f"dataset_mixer[{name!r}]: fractions need the rows counted; with --streaming use "
                    "dataset_mixing='probabilities'"
                )
            train = train.select(range(int(weight * len(train))))
        trains.append(_labelled(train, name))
        if evaluation is not None:
            evals.append(_labelled(evaluation, name))
    try:
        if mixing == "fractions":
            mixed = datasets.concatenate_datasets(trains).shuffle(seed=seed)
        else:
            total = sum(w for w in mixer.values() if w)
            weights = [w / total for w in mixer.values() if w]
            mixed = datasets.interleave_datasets(trains, probabilities=weights, seed=seed)
        evaluation = datasets.concatenate_datasets(evals) if evals else None
    except ValueError as err:  # the sources' columns do not line up (e.g. text in one, messages in another)
        raise DataError(f"dataset_mixer: the sources cannot be combined ({err}); give them the same columns") from None
    return mixed, evaluation
