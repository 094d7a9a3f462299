"""The range each numeric option takes, declared once beside its field and checked by its converter.

A field's metadata holds its :class:`Range` as ``rule`` (``ORPOConfig``'s inherited ``TrainingArguments``
fields get theirs from :data:`orpo.config.orpo_config.TRAINING_RULES`); :mod:`orpo.config.values` checks it
on every value read from a flag or YAML key, and :func:`orpo.config.values.check_fields` on every value a
dataclass is constructed with, so a wrong number is refused, naming the option, before anything loads.
Numbers must be finite unless the rule says ``allow_inf`` (NaN never passes).  This module imports nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts: bounds (``ge``/``gt`` below, ``le``/``lt`` above), and
    ``allow_inf`` where +-inf means something.  ``each``: the rule holds for each value of a mapping
    (``dataset_mixer``'s weights, named ``item``); ``note``: why, appended to the message."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    allow_inf: bool = False
    each: bool = False
    item: str = "value"
    note: str = ""

    def describe(self, integer: bool = False) -> str:
        """``must be a finite number >= 0``, ``each weight must be an integer in [0, 1)``..."""
        noun = "an integer" if integer else "a number" if self.allow_inf else "a finite number"
        low = (f"[{_number(self.ge)}", ">=", self.ge) if self.ge is not None else None
        low = (f"({_number(self.gt)}", ">", self.gt) if self.gt is not None else low
        high = (f"{_number(self.le)}]", "<=", self.le) if self.le is not None else None
        high = (f"{_number(self.lt)})", "<", self.lt) if self.lt is not None else high
        if low and high:
            text = f"{noun} in {low[0]}, {high[0]}"
        elif low or high:
            bound = low or high
            assert bound is not None
            text = f"{noun} {bound[1]} {_number(bound[2])}"
        else:
            text = noun
        if self.allow_inf:
            text += " (inf allowed)"
        if self.note:
            text += f" ({self.note})"
        return f"each {self.item} must be {text}" if self.each else f"must be {text}"

    def admits(self, value: Any, integer: bool = False) -> bool:
        """Whether ``value`` (a number; for ``each``, a number of the mapping) is in range."""
        if not is_number(value) or math.isnan(value) or (integer and not float(value).is_integer()):
            return False
        if math.isinf(value) and not self.allow_inf:
            return False
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def offending(self, value: Any, integer: bool = False) -> Any:
        """The part of ``value`` out of range (the value, or for ``each`` a one-item mapping), else None."""
        if self.each:
            items = value.items() if isinstance(value, Mapping) else []
            return next(({k: v} for k, v in items if not self.admits(v, integer)), None)
        return None if self.admits(value, integer) else value

    def edges(self) -> list[tuple[float, bool]]:
        """``(bound, accepted)`` for each declared bound, for tests that walk the rules."""
        return [
            (bound, accepted)
            for bound, accepted in ((self.ge, True), (self.gt, False), (self.le, True), (self.lt, False))
            if bound is not None
        ]


#: The explicit "no bound" marker: any finite number (or any integer).
ANY_FINITE = Range()
#: Any number, +-inf included (NaN still refused).
ANY_NUMBER = Range(allow_inf=True)


@dataclass(frozen=True)
class RangeWhen:
    """A field's range that depends on another field's value: ``ranges[value of other]``, else ``default``."""

    other: str
    ranges: Mapping[str, Range] = field(default_factory=dict)

    def pick(self, other_value: Any, default: Range | None) -> Range | None:
        return self.ranges.get(str(other_value), default)


#: orpo's own metadata keys, kept out of sight of ``transformers.HfArgumentParser`` (see :class:`Metadata`).
PRIVATE_KEYS = ("rule", "rule_when")


class Metadata(dict[str, Any]):
    """Field metadata whose orpo keys (:data:`PRIVATE_KEYS`) are readable by key (``metadata.get("rule")``)
    but not listed: ``HfArgumentParser`` passes every listed key on to ``argparse.add_argument``, which
    refuses keys it does not know."""

    def keys(self) -> list[str]:  # type: ignore[override]
        return [key for key in dict.keys(self) if key not in PRIVATE_KEYS]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        return [(key, self[key]) for key in self.keys()]

    def values(self) -> list[Any]:  # type: ignore[override]
        return [self[key] for key in self.keys()]

    def __len__(self) -> int:
        return len(self.keys())
