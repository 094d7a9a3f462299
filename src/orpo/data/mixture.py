"""The alignment-handbook's ``dataset_mixture`` as training (and eval) data, row for row as its ``get_dataset``.

Each dataset is loaded (its split and config, its ``columns`` only), shuffled with the mixture's seed and cut
to ``int(weight * rows)``; the parts are concatenated and shuffled with the seed (through :func:`.mix.mix`,
which labels each row with its source for the per-source report); ``test_split_size`` then holds out the
eval split with ``train_test_split(seed=seed)``.  Rows read and taken per dataset are logged, rows kept
after preparation are in the data report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from orpo.config.mixture import KEY, DatasetMixture, MixtureDataset

from .errors import DataError
from .mix import KEPT, mix

logger = logging.getLogger(__name__)


def take(dataset: Any, entry: MixtureDataset, seed: int) -> Any:
    """``int(weight * rows)`` rows after a seeded shuffle; all rows, in order, without a weight."""
    if entry.weight is None:
        return dataset
    return dataset.shuffle(seed=seed).select(range(int(len(dataset) * entry.weight)))


def load_mixture(mixture: DatasetMixture, load: Callable[[MixtureDataset], Any]) -> tuple[Any, Any]:
    """(train data, eval data or None); ``load(entry)`` gives one entry's split with its columns selected."""
    parts: dict[str, Any] = {}
    for index, (label, entry) in enumerate(zip(mixture.labels, mixture.datasets, strict=True)):
        try:
            data = load(entry)
        except (DataError, FileNotFoundError) as err:
            raise DataError(f"{KEY}.datasets[{index}]: {err}") from None
        parts[label] = take(data, entry, mixture.seed)
        unread = [c for c in entry.columns or () if c not in KEPT and c in parts[label].column_names]
        if unread:
            logger.warning(
                "%s.datasets[%d] (%s): column(s) %s kept but not read by orpo (it trains on %s)",
                KEY, index, label, ", ".join(unread), ", ".join(c for c in KEPT if not c.startswith("_")),
            )  # fmt: skip
        logger.info(
            "%s: %s: %d rows read, %d taken (weight %s)", KEY, label, len(data), len(parts[label]), entry.weight
        )
    total = sum(len(part) for part in parts.values())
    if total == 0:
        raise DataError(f"{KEY}: no rows taken (every dataset is empty or has weight 0)")
    try:
        # weight 1 in mix(): each part is already cut to its weight; mix concatenates and shuffles with the seed
        train, _ = mix(dict.fromkeys(parts, 1.0), "fractions", lambda label: (parts[label], None), mixture.seed)
    except DataError as err:
        raise DataError(str(err).replace("dataset_mixer", KEY, 1)) from None
    if mixture.test_split_size is None:
        return train, None
    try:
        split = train.train_test_split(test_size=mixture.test_split_size, seed=mixture.seed)
    except ValueError as err:  # datasets: a split would be empty, or more test rows than rows
        raise DataError(
            f"{KEY}.test_split_size={mixture.test_split_size!r} does not fit the mixture's {total} rows ({err})"
        ) from None
    return split["train"], split["test"]
