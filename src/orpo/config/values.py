"""How a field's values are read from flags and YAML: one converter per field, from its type and metadata.

The metadata transformers and argparse use is honoured: ``choices`` (and enum types) are checked,
``nargs='?'`` with ``const`` (``TrainingArguments.fsdp``) makes the bare flag and YAML ``true`` mean the
const, ``str | bool`` fields take booleans too, lists take several values or one comma-separated value.
orpo's ``rule`` (a :class:`~orpo.config.rules.Range`) is checked on numbers; floats must be finite unless
it allows inf.  These checks are the only ones: :func:`check_fields` runs them on a constructed dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import functools
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orpo.config.rules import ANY_FINITE, PRIVATE_KEYS, Range, RangeWhen

_TRUE = ("true", "1", "yes", "y", "on")
_FALSE = ("false", "0", "no", "n", "off")
_NONE = ("none", "null", "~")


class ValueProblem(argparse.ArgumentTypeError):
    """A value that does not fit its field; the caller adds where it came from."""


class ChoiceProblem(ValueProblem):
    """A text that is none of the field's choices."""

    def __init__(self, value: str, choices: tuple[str, ...]) -> None:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        super().__init__(f"invalid choice {value!r}{hint}; choose from {', '.join(choices)}")
        self.value, self.choices = value, choices


class RangeProblem(ValueProblem):
    """A number out of its field's :class:`~orpo.config.rules.Range`: ``shown`` is the part out of range."""

    def __init__(self, shown: Any, rule: str) -> None:
        super().__init__(f"{shown!r}: {rule}")
        self.shown, self.rule = shown, rule


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE)


def to_bool(value: Any, optional: bool = False) -> bool | None:
    if isinstance(value, bool):
        return value
    if optional and _is_none(value):
        return None
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueProblem(f"expected true or false, got {value!r}")


def to_int(value: Any, optional: bool = False) -> int | None:
    if optional and _is_none(value):
        return None
    if isinstance(value, bool):
        raise ValueProblem(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueProblem(f"expected an integer, got {value!r}") from None
    if number.is_integer():
        return int(number)
    raise ValueProblem(f"expected an integer, got {value!r}")


def to_float(value: Any, optional: bool = False) -> float | None:
    if optional and _is_none(value):
        return None
    if isinstance(value, bool):
        raise ValueProblem(f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        raise ValueProblem(f"expected a number, got {value!r}") from None


def to_list(value: Any, single_as_str: bool = False, optional: bool = False) -> Any:
    """A list from several values or one comma-separated text; ``single_as_str``: the field also takes one
    text, and the word ``none`` is such a text (``report_to: none``), not None."""
    if optional and (value is None or (not single_as_str and _is_none(value))):
        return None
    items = value if isinstance(value, list | tuple) else [value]
    out = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    return out[0] if single_as_str and len(out) == 1 else out


def to_json(value: Any, allow_str: bool = False, numbers: bool = False) -> Any:
    """A mapping from a dict or JSON text; ``numbers``: its values read as numbers (YAML reads ``1e-3`` as a
    text)."""
    parsed = _to_mapping(value, allow_str)
    if not numbers or not isinstance(parsed, dict):
        return parsed
    return {
        key: item if isinstance(item, int | float) and not isinstance(item, bool) else to_float(item)
        for key, item in parsed.items()
    }


def _to_mapping(value: Any, allow_str: bool) -> Any:
    if isinstance(value, dict):
        return value
    if isinstance(value, list | tuple):  # a YAML list: its text would read as bad JSON
        raise ValueProblem(f"expected a mapping (JSON object), got a list: {value!r}")
    if _is_none(value):
        return None
    text = str(value).strip()
    if allow_str and not text.startswith("{"):
        return text
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueProblem(f"invalid JSON ({err.msg} at character {err.pos}): {text!r}") from None
    if not isinstance(parsed, dict):
        raise ValueProblem(f"expected a JSON object, got {text!r}")
    return parsed


def _to_text(value: Any, optional: bool) -> str | None:
    if optional and _is_none(value):
        return None
    if value is None:
        raise ValueProblem("expected a value, got null")
    return value.value if isinstance(value, enum.Enum) else str(value)


def check_choice(value: Any, choices: tuple[str, ...]) -> None:
    """The one check of a field's ``choices`` (None and enum members are the type's business)."""
    if choices and isinstance(value, str) and value not in choices:
        raise ChoiceProblem(value, choices)


def check_range(value: Any, rule: Range | None, integer: bool) -> None:
    """The one check of a field's ``rule``; None is left to the type (a field without a value)."""
    if rule is None or value is None or isinstance(value, str | bool):
        return
    if rule.each:
        bad = rule.offending(value) if isinstance(value, dict) else None
    elif isinstance(value, int | float):
        bad = rule.offending(value, integer and not isinstance(value, float))
    else:
        return
    if bad is not None:
        raise RangeProblem(bad, rule.describe(integer and not rule.each))


def _flag_word(value: Any) -> bool | None:
    """True/False for a boolean or a true/false word, else None."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str) else ""
    return True if text in _TRUE else False if text in _FALSE else None


@dataclass(frozen=True)
class ValueKind:
    """How one field's values are read (``parse``) and checked (``choices``, ``rule``), and what its flag
    takes (``nargs``, ``const``).  ``when``: a range that depends on another field (checked once both are known)."""

    parse: Callable[[Any], Any]
    metavar: str
    nargs: str | None = None  # None: one value; "?": an optional value (``const`` when bare); "+": one or more
    const: Any = None
    is_bool: bool = False
    choices: tuple[str, ...] = ()
    rule: Range | None = None
    integer: bool = False
    when: RangeWhen | None = None

    @property
    def numeric(self) -> bool:
        """Whether the field holds numbers (or a mapping of numbers, ``rule.each``) that a range applies to."""
        return self.metavar in ("INT", "FLOAT") or (self.rule is not None and self.rule.each)

    def check(self, value: Any, rule: Range | None = None) -> None:
        """Refuse a value of the field's type that its choices or range (``rule``: instead of its own) refuse."""
        check_choice(value, self.choices)
        check_range(value, rule or self.rule, self.integer)

    def convert(self, value: Any) -> Any:
        """A flag's text or a YAML value as the field's value, checked."""
        converted = self.parse(value)
        self.check(converted)
        return converted


def _union(tp: Any) -> tuple[list[Any], bool, list[Any]]:
    """(member types without None and Literals, whether None is allowed, the Literal values)."""
    origin = typing.get_origin(tp)
    args = list(typing.get_args(tp)) if origin is typing.Union or origin is types.UnionType else [tp]
    literals = [value for a in args if typing.get_origin(a) is typing.Literal for value in typing.get_args(a)]
    members = [a for a in args if a is not type(None) and typing.get_origin(a) is not typing.Literal]
    return members, type(None) in args, literals


def _text_kind(members: list[Any], optional: bool, literals: list[Any], metadata: dict[str, Any]) -> ValueKind:
    """Text fields, with their choices (or enum values) and the booleans some of them take.

    ``fsdp: str | None`` with ``const=True``: true (and the bare flag) means True, false None;
    ``str | bool``: true/false are booleans; ``str | Literal[False]``: false is False.
    """
    enums = [m for m in members if isinstance(m, type) and issubclass(m, enum.Enum)]
    listed = metadata.get("choices") or ([e.value for e in enums[0]] if enums else [])
    choices = tuple(str(choice) for choice in listed)
    const = metadata.get("const", dataclasses.MISSING)
    missing = dataclasses.MISSING
    on_true: Any = True if const is True or bool in members else missing
    on_false: Any = False if bool in members or False in literals else None if const is True and optional else missing

    def convert(value: Any) -> Any:
        word = None if on_true is missing and on_false is missing else _flag_word(value)
        if word is True and on_true is not missing:
            return on_true
        if word is False and on_false is not missing:
            return on_false
        return _to_text(value, optional)

    metavar = "{" + ",".join(choices) + "}" if choices and len(choices) <= 8 else ("NAME" if choices else "TEXT")
    if const is not missing:
        return ValueKind(convert, metavar, nargs=metadata.get("nargs", "?"), const=const, choices=choices)
    return ValueKind(convert, metavar, choices=choices)


def value_kind(tp: Any, metadata: dict[str, Any]) -> ValueKind:
    """The :class:`ValueKind` of a field of type ``tp`` with dataclass ``metadata``."""
    members, optional, literals = _union(tp)
    origins = [typing.get_origin(m) or m for m in members]
    rule: Range | None = metadata.get("rule")
    when: RangeWhen | None = metadata.get("rule_when")
    if members == [bool]:
        return ValueKind(lambda v: to_bool(v, optional), "BOOL", nargs="?", const=True, is_bool=True)
    if list in origins and "const" in metadata and str in members:  # ORPOConfig.fsdp on transformers 5.3-5.5
        return _text_kind([str], optional, literals, metadata)
    if list in origins:
        single = str in members
        return ValueKind(lambda v: to_list(v, single, optional), "VALUE", nargs="+")
    if dict in origins:
        allow_str = str in members
        mapping = next(m for m in members if (typing.get_origin(m) or m) is dict)
        numbers = typing.get_args(mapping)[1:] in ((float,), (int,))
        return ValueKind(lambda v: to_json(v, allow_str, numbers), "JSON", rule=rule, when=when)
    if float in members:
        return ValueKind(lambda v: to_float(v, optional), "FLOAT", rule=rule or ANY_FINITE, when=when)
    if int in members:
        return ValueKind(lambda v: to_int(v, optional), "INT", rule=rule, integer=True, when=when)
    objects = [m for m in members if isinstance(m, type) and dataclasses.is_dataclass(m)]
    if objects:
        cls = objects[0]

        def convert_object(value: Any) -> Any:
            if isinstance(value, cls) or value is None:
                return value
            parsed = to_json(value)
            return None if parsed is None else cls(**parsed)

        return ValueKind(convert_object, "JSON")
    if str in members or any(isinstance(m, type) and issubclass(m, enum.Enum) for m in members):
        return _text_kind(members, optional, literals, metadata)
    return ValueKind(lambda v: v, "VALUE")


def field_metadata(cls: type, f: dataclasses.Field[Any]) -> dict[str, Any]:
    """A field's metadata, with the ``rule`` its class declares for it in ``inherited_rules`` (ORPOConfig's
    table for ``TrainingArguments``' fields, whose own metadata orpo does not own)."""
    metadata = {**f.metadata, **{key: f.metadata[key] for key in PRIVATE_KEYS if key in f.metadata}}
    inherited: dict[str, Range] = getattr(cls, "inherited_rules", {})
    if f.name in inherited:
        if "rule" in metadata:
            raise RuntimeError(f"{cls.__name__}.{f.name}: a range in its metadata and in inherited_rules; keep one")
        metadata["rule"] = inherited[f.name]
    return metadata


@functools.cache
def field_kinds(cls: type) -> dict[str, ValueKind]:
    """The :class:`ValueKind` of each ``__init__`` field of a dataclass (built once per class)."""
    hints = typing.get_type_hints(cls)
    return {f.name: value_kind(hints[f.name], field_metadata(cls, f)) for f in dataclasses.fields(cls) if f.init}


def check_fields(obj: Any, owner: str | None = None) -> None:
    """The check of a constructed dataclass (``ORPOConfig(beta=float("nan"))``): each field's choices and
    range, as its converter checks a flag; a ``ValueError`` naming ``owner.field``, the value and the rule."""
    owner = owner or type(obj).__name__
    cls: type = type(obj)
    for name, kind in field_kinds(cls).items():
        value = getattr(obj, name)
        rule = kind.when.pick(getattr(obj, kind.when.other), kind.rule) if kind.when else None
        try:
            kind.check(value, rule)
        except ChoiceProblem as err:
            raise ValueError(f"{owner}.{name}={value!r} is not one of {', '.join(err.choices)}") from None
        except RangeProblem as err:
            raise ValueError(f"{owner}.{name}={err.shown!r}: {err.rule}") from None
