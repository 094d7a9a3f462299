"""argparse for orpo's commands: one-line errors, no prefix matching, a flag given twice refused.

:func:`add_options` turns table options into flags (``--max-length`` and ``--max_length``, each alias,
``--no-flag`` for booleans); the parsed flags come back as a :class:`~orpo.config.options.Source`, in the order
given, so that a repeat is refused and errors name the flag as typed.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from orpo.config.options import Entry, Option, Source
from orpo.config.usage import UsageError

_ENTRIES = "_orpo_entries"
_GIVEN = "_orpo_given"


class HelpFormatter(argparse.HelpFormatter):
    """Lists each option once, by its dash spellings: ``--learning-rate, --lr FLOAT``."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        shown = [flag for flag in action.option_strings if "_" not in flag] or action.option_strings[:1]
        return f"{', '.join(shown)} {self._format_args(action, self._get_default_metavar_for_optional(action))}"


class _StoreOnce(argparse.Action):
    """argparse's plain store, except that a second occurrence is an error instead of silently winning."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given = namespace.__dict__.setdefault(_GIVEN, set())
        if self.dest in given:
            parser.error(f"{option_string or self.dest} given twice; keep one")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (a :class:`UsageError`, exit 2) and no abbreviated flags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)
        self.known_flags: list[str] = []

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")

    def unknown(self, leftovers: Sequence[str]) -> UsageError:
        """The error for arguments no option took: the first unknown flag, with the closest known one."""
        flags = [item.split("=", 1)[0] for item in leftovers if item.startswith("-")]
        if not flags:
            return UsageError(f"unexpected argument {leftovers[0]!r} (see {self.prog} --help)")
        candidates = [flag for flag in self.known_flags if "_" not in flag]
        close = difflib.get_close_matches(flags[0].replace("_", "-"), candidates, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return UsageError(f"unknown flag {flags[0]}{hint} (see {self.prog} --help)")


class _Collect(argparse.Action):
    """Records a table flag as given (spelling and raw text); the table converts and checks it later."""

    def __init__(self, option_strings: list[str], dest: str, option: Option, fixed: Any = None, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.option = option
        self.fixed = fixed

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        raw = self.fixed if self.nargs == 0 else values
        namespace.__dict__.setdefault(_ENTRIES, []).append(Entry(self.option, option_string or self.dest, raw))


def _flags(names: Iterable[str], prefix: str = "") -> list[str]:
    out: list[str] = []
    for name in names:
        out.append(f"--{prefix}{name.replace('_', '-')}")
        if "_" in name or prefix:
            out.append(f"--{prefix.replace('-', '_')}{name}")
    return list(dict.fromkeys(out))


def help_text(option: Option, help_override: str | None = None) -> str:
    text = option.help if help_override is None else help_override
    if option.default not in (None, "", []):
        text = f"{text} (default: {option.default})" if text else f"default: {option.default}"
    return text.replace("%", "%%")


def add_options(
    parser: ArgumentParser,
    container: argparse._ActionsContainer,
    options: Iterable[Option],
    helps: dict[str, str] | None = None,
) -> None:
    """One flag per option (all its spellings, dash and underscore forms), ``--no-...`` for booleans."""
    for option in options:
        flags = _flags(option.spellings)
        kwargs: dict[str, Any] = {"metavar": option.kind.metavar}
        if option.kind.nargs is not None:
            kwargs["nargs"] = option.kind.nargs
        if option.kind.nargs == "?":
            kwargs["const"] = option.kind.const
        help_override = (helps or {}).get(option.name)
        container.add_argument(
            *flags,
            dest=f"opt:{option.name}",
            action=_Collect,
            option=option,
            default=argparse.SUPPRESS,
            help=help_text(option, help_override),
            **kwargs,
        )
        parser.known_flags.extend(flags)
        if option.kind.is_bool:
            negated = _flags(option.spellings, prefix="no-")
            container.add_argument(
                *negated,
                dest=f"opt:{option.name}",
                action=_Collect,
                option=option,
                fixed=False,
                nargs=0,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
            parser.known_flags.extend(negated)


def flag_source(
    parser: ArgumentParser, argv: Sequence[str], name: str = "the command line"
) -> tuple[argparse.Namespace, Source]:
    """Parse ``argv``: (the namespace of the parser's own arguments, the table flags as a Source)."""
    namespace, leftovers = parser.parse_known_args(list(argv))
    if leftovers:
        raise parser.unknown(leftovers)
    entries = namespace.__dict__.pop(_ENTRIES, [])
    namespace.__dict__.pop(_GIVEN, None)
    return namespace, Source(name, entries, "flags")
