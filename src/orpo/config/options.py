"""The option table: every flag and YAML key, read off the dataclasses' fields and their metadata.

A field of :class:`~orpo.config.arguments.ModelArguments`, :class:`~orpo.config.arguments.DataArguments`,
:class:`~orpo.ORPOConfig` or :class:`~orpo.config.switches.Switches` is one :class:`Option`, spelled by its name
and the ``aliases`` in its metadata (``--lr`` for ``learning_rate``).  A :class:`Source` is what one
place gave (the command line, a recipe, ``LLMTrainingParams``); :meth:`Source.values` converts it with
the fields' converters and refuses a field set twice in one place; :func:`merge` layers sources.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from orpo.config.arguments import DataArguments, ModelArguments, ORPOArguments
from orpo.config.switches import Switch, Switches
from orpo.config.usage import UsageError
from orpo.config.values import RangeProblem, ValueKind, ValueProblem, field_metadata, value_kind

#: Groups of options, in the order ``orpo train --help`` lists them.
GROUPS = {
    "model": "model, LoRA and quantization (ModelArguments)",
    "data": "data (DataArguments)",
    "orpo": "ORPO (ORPOConfig)",
    "training": "training (ORPOConfig fields of transformers.TrainingArguments)",
    "switch": "AutoTrain and alignment-handbook switches",
}


def normalize(spelling: str) -> str:
    """``--max-length`` / ``max_length`` / ``--max_length`` -> ``max_length``."""
    return spelling.strip().lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Option:
    """One field as a flag and YAML key."""

    name: str
    group: str
    aliases: tuple[str, ...]
    kind: ValueKind
    help: str  # the field's own help, without its default
    default: Any
    switch: Switch | None = None

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def effects(self, value: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """(fields it sets, fields it sets where its source sets them no other way)."""
        if self.switch is None:
            return {self.name: value}, {}
        return self.switch.sets(value), self.switch.implies(value)


def field_options(cls: type, group: str | Mapping[str, str]) -> list[Option]:
    """The options of a dataclass's fields; ``group`` maps field names to groups (or is one group)."""
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        metadata = field_metadata(cls, f)
        default = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        options.append(
            Option(
                name=f.name,
                group=group if isinstance(group, str) else group.get(f.name, "training"),
                aliases=tuple(dict.fromkeys(normalize(a) for a in metadata.get("aliases", ()))),
                kind=value_kind(hints[f.name], metadata),
                help=str(metadata.get("help", "")),
                default=None if default is dataclasses.MISSING else default,
                switch=metadata.get("switch"),
            )
        )
    return options


class OptionTable:
    """Options by name and by every spelling."""

    def __init__(self, options: Iterable[Option]) -> None:
        self.options: dict[str, Option] = {}
        self._by_spelling: dict[str, Option] = {}
        for option in options:
            for spelling in option.spellings:
                if spelling in self._by_spelling:  # the dataclasses are tested not to overlap
                    raise RuntimeError(f"{spelling} spells both {self._by_spelling[spelling].name} and {option.name}")
                self._by_spelling[spelling] = option
            self.options[option.name] = option

    def lookup(self, spelling: str) -> Option | None:
        return self._by_spelling.get(normalize(spelling))

    def suggest(self, spelling: str) -> str:
        """`` (did you mean --x?)`` for a misspelt flag, `` (did you mean x?)`` for a key, or ``""``."""
        close = difflib.get_close_matches(normalize(spelling), list(self._by_spelling), n=1, cutoff=0.75)
        if not close:
            return ""
        return (
            f" (did you mean --{close[0].replace('_', '-')}?)"
            if spelling.startswith("-")
            else f" (did you mean {close[0]}?)"
        )

    def subset(self, names: Iterable[str]) -> OptionTable:
        return OptionTable(self.options[name] for name in names)

    def names(self, group: str) -> set[str]:
        return {name for name, option in self.options.items() if option.group == group}


def _table(orpo_options: list[Option]) -> OptionTable:

    return OptionTable(
        [
            *field_options(ModelArguments, "model"),
            *field_options(DataArguments, "data"),
            *orpo_options,
            *field_options(Switches, "switch"),
        ]
    )


@functools.cache
def option_table() -> OptionTable:
    """Every flag/key ``orpo train`` accepts, built once from the dataclasses (imports transformers)."""
    from orpo.config.orpo_config import ORPOConfig

    orpo_fields = {f.name: "orpo" for f in dataclasses.fields(ORPOArguments)}
    return _table(field_options(ORPOConfig, orpo_fields))


@functools.cache
def light_table() -> OptionTable:
    """The options that need neither torch nor transformers: all but TrainingArguments' own fields."""

    return _table(field_options(ORPOArguments, "orpo"))


# ---------------------------------------------------------------------------------------
# Sources: what one place gave
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One value as given: ``spelling`` is the flag or key as written (``--lr``, ``lr``, ``--no-peft``)."""

    option: Option
    spelling: str
    raw: Any
    line: int | None = None


@dataclass
class Source:
    """The values one place gave: ``style`` says how to name them in errors (flags, keys or fields)."""

    name: str
    entries: list[Entry]
    style: str = "flags"  # "flags" | "keys" | "fields"

    @classmethod
    def from_mapping(
        cls, name: str, values: Mapping[str, Any], table: OptionTable | None = None, style: str = "fields"
    ) -> Source:
        """A dict of spellings -> values (``LLMTrainingParams``' fields, a Python dict of settings)."""
        table = table or option_table()
        entries = []
        for key, raw in values.items():
            option = table.lookup(str(key))
            if option is None:
                raise UsageError(f"{name}: unknown key {key!r}{table.suggest(str(key))}")
            entries.append(Entry(option, str(key), raw))
        return cls(name, entries, style)

    def _where(self, entry: Entry) -> str:
        if self.style == "keys":
            return f"{self.name}, line {entry.line}: " if entry.line else f"{self.name}: "
        return ""

    def _label(self, entry: Entry) -> str:
        if self.style == "flags":
            return f"argument {entry.spelling}"
        if self.style == "keys":
            return f"key {entry.spelling!r}"
        return f"{self.name}.{entry.spelling}"

    def problem(self, entry: Entry, err: ValueProblem) -> str:
        """The one line for a value its option refuses: ``--beta nan: must be a finite number >= 0`` (a flag
        as typed), ``recipe.yaml, line 3: beta=nan: ...`` (a key), ``LLMTrainingParams.dpo_beta=nan: ...``."""
        if not isinstance(err, RangeProblem):
            return f"{self._where(entry)}{self._label(entry)}: {err}"
        if self.style == "flags":
            shown = entry.raw if isinstance(entry.raw, str) and not isinstance(err.shown, dict) else repr(err.shown)
            return f"{entry.spelling} {shown}: {err.rule}"
        name = f"{self.name}.{entry.spelling}" if self.style == "fields" else entry.spelling
        return f"{self._where(entry)}{name}={err.shown!r}: {err.rule}"

    def setter(self, name: str) -> Entry | None:
        """The last entry of this source that gives field ``name`` by its own option."""
        return next((entry for entry in reversed(self.entries) if entry.option.name == name), None)

    def _clash(self, first: Entry, second: Entry, target: str) -> str:
        if self.style == "flags":
            if normalize(first.spelling) == normalize(second.spelling):
                return f"{second.spelling} given twice; keep one"
            return f"{first.spelling} and {second.spelling} both set {target}; keep one"
        if first.spelling == second.spelling:
            lines = f" (lines {first.line} and {second.line})" if first.line and second.line else ""
            return f"{self.name}: key {second.spelling!r} given twice{lines}; keep one"
        plural = "keys" if self.style == "keys" else "fields"
        return f"{self.name}: {plural} {first.spelling!r} and {second.spelling!r} both set {target}; keep one"

    def values(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(fields set, fields implied) by this source: values converted, a field set twice refused."""
        explicit: dict[str, Any] = {}
        implied: dict[str, Any] = {}
        setters: dict[str, Entry] = {}
        for entry in self.entries:
            try:
                value = entry.option.kind.convert(entry.raw)
            except ValueProblem as err:
                raise UsageError(self.problem(entry, err)) from None
            try:
                sets, implies = entry.option.effects(value)
            except UsageError as err:
                raise UsageError(f"{self._where(entry)}{err}") from None
            for target in dict.fromkeys((entry.option.name, *sets)):
                if target in setters:
                    raise UsageError(self._clash(setters[target], entry, target))
                setters[target] = entry
            explicit.update(sets)
            implied.update(implies)
        return explicit, implied


def check_dependent_ranges(values: Mapping[str, Any], sources: Iterable[Source], table: OptionTable) -> None:
    """The ranges that depend on another field (``dataset_mixer``'s weights on ``dataset_mixing``), checked
    once the sources are merged, the error naming the option as the source that set it spelled it."""
    for name, value in values.items():
        option = table.options.get(name)
        when = option.kind.when if option is not None else None
        if option is None or when is None:
            continue
        other = table.options.get(when.other)
        rule = when.pick(values.get(when.other, other.default if other else None), None)
        if rule is None:
            continue
        try:
            option.kind.check(value, rule)
        except RangeProblem as err:
            for source in reversed(list(sources)):
                entry = source.setter(name)
                if entry is not None:
                    raise UsageError(source.problem(entry, err)) from None
            raise UsageError(f"{name}={err.shown!r}: {err.rule}") from None


def merge(*sources: Source) -> dict[str, Any]:
    """{field: value} from sources given lowest priority first: a later source wins for every field it sets."""
    merged: dict[str, Any] = {}
    for source in sources:
        explicit, implied = source.values()
        merged.update({name: value for name, value in implied.items() if name not in explicit})
        merged.update(explicit)
    return merged
