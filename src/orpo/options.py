"""Flags and YAML keys of ``orpo train``, generated from the dataclasses (one source of truth).

Every field of :class:`~orpo.ORPOConfig`, :class:`~orpo.project.ModelArguments` and
:class:`~orpo.project.DataArguments` becomes ``--name-with-dashes`` / ``--name_with_underscores``
and a YAML key, with a converter from its type annotation.  :data:`ALIASES` adds the spellings of
AutoTrain and the alignment-handbook; :func:`_special_options` the switches that set other fields
(``load_in_4bit`` -> ``quantization``) or only check something (``--trainer orpo``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .project import UsageError

TRACEBACK_FLAG = "--debug"
_TEXT_SPECIALS = ("trainer", "backend", "padding", "username", "model_ref")

# ---------------------------------------------------------------------------------------
# Value conversion shared by flags and YAML keys
# ---------------------------------------------------------------------------------------

_TRUE = ("true", "1", "yes", "y", "on")
_FALSE = ("false", "0", "no", "n", "off")
_NONE = ("none", "null", "~")


def _fail(message: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(message)


def to_bool(value: Any, optional: bool = False) -> bool | None:
    if isinstance(value, bool):
        return value
    if value is None and optional:
        return None
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if optional and text in _NONE:
        return None
    raise _fail(f"expected true or false, got {value!r}")


def to_int(value: Any, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool):
        raise _fail(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if optional and text.lower() in _NONE:
        return None
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise _fail(f"expected an integer, got {value!r}") from None
        if number.is_integer():
            return int(number)
        raise _fail(f"expected an integer, got {value!r}") from None


def to_float(value: Any, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool):
        raise _fail(f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if optional and text.lower() in _NONE:
        return None
    try:
        return float(text)
    except ValueError:
        raise _fail(f"expected a number, got {value!r}") from None


def to_list(value: Any, single_as_str: bool = False) -> Any:
    items = value if isinstance(value, list | tuple) else [value]
    out: list[str] = []
    for item in items:
        out.extend(part.strip() for part in str(item).split(",") if part.strip())
    if single_as_str and len(out) == 1:
        return out[0]
    return out


def to_json(value: Any, allow_str: bool = False) -> Any:
    if isinstance(value, dict) or value is None:
        return value
    text = str(value).strip()
    if text.lower() in _NONE:
        return None
    if allow_str and not text.startswith("{"):
        return text
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise _fail(f"invalid JSON ({err.msg} at character {err.pos}): {text!r}") from None
    if not isinstance(parsed, dict):
        raise _fail(f"expected a JSON object, got {text!r}")
    return parsed


@dataclass
class Option:
    """One flag / YAML key."""

    name: str  # canonical (underscored) name of the flag/key
    target: str  # field it sets (for kind "field"/"alias"), or the name (for "special")
    kind: str  # "field" | "alias" | "special"
    section: str  # "model" | "data" | "config" | "special"
    convert: Callable[[Any], Any]
    argparse_kwargs: dict[str, Any]
    help: str = ""
    is_bool: bool = False

    @property
    def flags(self) -> list[str]:
        flags = [f"--{self.name.replace('_', '-')}"]
        if "_" in self.name:
            flags.append(f"--{self.name}")
        return flags


def _union_members(tp: Any) -> tuple[list[Any], bool]:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = list(typing.get_args(tp))
        members = [a for a in args if a is not type(None) and typing.get_origin(a) is not typing.Literal]
        return members, type(None) in args
    return [tp], False


def _converter_for(tp: Any, metadata: dict[str, Any], name: str) -> tuple[Callable[[Any], Any], dict[str, Any], bool]:
    """(converter, argparse kwargs, is_bool) for a dataclass field type."""
    members, optional = _union_members(tp)
    choices = metadata.get("choices")
    origins = [typing.get_origin(m) or m for m in members]
    if name == "debug":  # TrainingArguments.debug; a bare --debug means "show tracebacks" (see main)
        return (lambda v: v), {"nargs": "?", "const": TRACEBACK_FLAG, "metavar": "OPTION"}, False
    if bool in members:
        convert = lambda v: to_bool(v, optional)  # noqa: E731
        return convert, {"nargs": "?", "const": True, "metavar": "BOOL"}, True
    if list in origins:
        single = str in members
        return (lambda v: to_list(v, single)), {"nargs": "+", "metavar": "VALUE"}, False
    if dict in origins:
        allow_str = str in members
        return (lambda v: to_json(v, allow_str)), {"metavar": "JSON"}, False
    if float in members:
        return (lambda v: to_float(v, optional)), {"metavar": "FLOAT"}, False
    if int in members:
        return (lambda v: to_int(v, optional)), {"metavar": "INT"}, False
    enums = [m for m in members if isinstance(m, type) and issubclass(m, enum.Enum)]
    if str in members or enums:
        values = choices or ([e.value for e in enums[0]] if enums and str not in members else None)

        def convert_str(v: Any) -> Any:
            if v is None:
                return None
            text = str(v)
            if values and text not in values:
                raise _fail(f"invalid choice {text!r} (choose from {', '.join(map(str, values))})")
            return text

        kwargs: dict[str, Any] = {"metavar": "{" + ",".join(map(str, values)) + "}" if values else "TEXT"}
        return convert_str, kwargs, False
    if members and isinstance(members[0], type) and dataclasses.is_dataclass(members[0]):
        cls = members[0]

        def convert_obj(v: Any) -> Any:
            if isinstance(v, cls) or v is None:
                return v
            parsed = to_json(v)
            return None if parsed is None else cls(**parsed)

        return convert_obj, {"metavar": "JSON"}, False
    return (lambda v: v), {"metavar": "VALUE"}, False


def _field_options(cls: type, section: str) -> list[Option]:
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        meta = dict(f.metadata)
        convert, kwargs, is_bool = _converter_for(hints[f.name], meta, f.name)
        help_text = meta.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        if default not in (None, "", []):
            help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        options.append(Option(f.name, f.name, "field", section, convert, kwargs, help_text.replace("%", "%%"), is_bool))
    return options


# AutoTrain / TRL / alignment-handbook spellings -> field.
ALIASES: dict[str, tuple[str, str]] = {
    # AutoTrain (aitraining llm ...)
    "model": ("model_name_or_path", "AutoTrain"),
    "data_path": ("dataset_name", "AutoTrain"),
    "project_name": ("output_dir", "AutoTrain"),
    "train_split": ("dataset_train_split", "AutoTrain"),
    "valid_split": ("dataset_test_split", "AutoTrain"),
    "lr": ("learning_rate", "AutoTrain"),
    "epochs": ("num_train_epochs", "AutoTrain"),
    "batch_size": ("per_device_train_batch_size", "AutoTrain"),
    "eval_batch_size": ("per_device_eval_batch_size", "AutoTrain"),
    "gradient_accumulation": ("gradient_accumulation_steps", "AutoTrain"),
    "dpo_beta": ("beta", "AutoTrain"),
    "log": ("report_to", "AutoTrain"),
    "warmup_ratio": ("warmup_steps", "AutoTrain; a fraction < 1 of the training steps"),
    "scheduler": ("lr_scheduler_type", "AutoTrain"),
    "optimizer": ("optim", "AutoTrain"),
    "model_max_length": ("max_length", "AutoTrain"),
    "peft": ("use_peft", "AutoTrain"),
    "target_modules": ("lora_target_modules", "AutoTrain"),
    "repo_id": ("hub_model_id", "AutoTrain"),
    "token": ("hub_token", "AutoTrain"),
    # TRL / alignment-handbook / datasets
    "model_path": ("model_name_or_path", "alias"),
    "torch_dtype": ("dtype", "TRL"),
    "dataset": ("dataset_name", "alias"),
    "data": ("dataset_name", "alias"),
    "subset": ("dataset_config", "alias"),
    "dataset_subset": ("dataset_config", "alias"),
    "split": ("dataset_train_split", "alias"),
    "eval_split": ("dataset_test_split", "alias"),
    "preprocessing_num_workers": ("dataset_num_proc", "alignment-handbook"),
}


def _special_options() -> list[Option]:
    """Flags that are not a field but set fields (or only check something)."""

    def opt(
        name: str, convert: Callable[[Any], Any], kwargs: dict[str, Any], help_text: str, is_bool: bool = False
    ) -> Option:
        return Option(name, name, "special", "special", convert, kwargs, help_text, is_bool)

    bool_kwargs = {"nargs": "?", "const": True, "metavar": "BOOL"}
    return [
        opt("trainer", str, {"metavar": "orpo"}, "AutoTrain's trainer; only 'orpo' is supported"),
        opt("backend", str, {"metavar": "local"}, "AutoTrain's backend; only 'local' (this process)"),
        opt(
            "block_size", lambda v: to_int(v, True), {"metavar": "INT"}, "AutoTrain: max_length (-1: keep the default)"
        ),
        opt("use_flash_attention_2", to_bool, bool_kwargs, "attn_implementation=flash_attention_2", True),
        opt("load_in_4bit", to_bool, bool_kwargs, "quantization=int4 (alignment-handbook)", True),
        opt("load_in_8bit", to_bool, bool_kwargs, "quantization=int8 (alignment-handbook)", True),
        opt("disable_gradient_checkpointing", to_bool, bool_kwargs, "activation_checkpointing=false (AutoTrain)", True),
        opt("add_eos_token", to_bool, bool_kwargs, "AutoTrain; orpo always ends completions with EOS", True),
        opt("padding", str, {"metavar": "SIDE"}, "AutoTrain; ignored (batches are right-padded)"),
        opt("username", str, {"metavar": "USER"}, "AutoTrain; hub user for --push-to-hub (hub_model_id=USER/PROJECT)"),
        opt("model_ref", str, {"metavar": "MODEL"}, "AutoTrain (DPO); ORPO uses no reference model"),
        opt(
            "overwrite_output_dir",
            to_bool,
            bool_kwargs,
            "accepted for old recipes; orpo writes into the output dir",
            True,
        ),
        opt(
            "dataset_mixer",
            to_json,
            {"metavar": "JSON"},
            "alignment-handbook; one dataset with weight 1.0 is supported",
        ),
        opt(
            "dataset_splits",
            to_list,
            {"nargs": "+", "metavar": "SPLIT"},
            "alignment-handbook: [train split, test split]",
        ),
    ]


def _apply_special(name: str, value: Any, out: dict[str, Any]) -> None:
    if name == "trainer":
        trainer = str(value).strip().lower()
        if trainer != "orpo":
            raise UsageError(
                f"trainer {value!r} is not supported: orpo trains ORPO only (--trainer orpo); "
                "use AutoTrain or TRL for sft/dpo/reward/ppo"
            )
    elif name == "backend":
        if str(value) not in ("local", "local-cli"):
            raise UsageError(f"backend {value!r} is not supported: orpo trains in this process (--backend local)")
    elif name == "block_size":
        if value is not None and value > 0:
            out["max_length"] = value
    elif name == "use_flash_attention_2":
        if value:
            out["attn_implementation"] = "flash_attention_2"
    elif name in ("load_in_4bit", "load_in_8bit"):
        if value:
            out["quantization"] = "int4" if name == "load_in_4bit" else "int8"
    elif name == "disable_gradient_checkpointing":
        if value:
            out["activation_checkpointing"] = False
    elif name == "add_eos_token":
        if value is False:
            raise UsageError("add_eos_token=false is not supported: orpo ends every completion with EOS exactly once")
    elif name == "padding":
        if str(value) not in ("right", "left"):
            raise UsageError(f"padding must be right or left, got {value!r}")
    elif name == "username":
        out["_username"] = value
    elif name == "model_ref":
        if value not in (None, "", "none", "None"):
            raise UsageError("ORPO uses no reference model: drop --model-ref")
    elif name == "overwrite_output_dir":
        pass
    elif name == "dataset_mixer":
        if not value:
            return
        if len(value) != 1 or float(next(iter(value.values()))) != 1.0:
            raise UsageError("dataset_mixer with several datasets or fractions is not supported; give one dataset_name")
        out["dataset_name"] = next(iter(value))
    elif name == "dataset_splits":
        splits = list(value or [])
        if splits:
            out["dataset_train_split"] = splits[0]
        if len(splits) > 1:
            out["dataset_test_split"] = splits[1]


@dataclass
class OptionTable:
    options: dict[str, Option]
    model_fields: set[str]
    data_fields: set[str]
    config_fields: set[str]

    def lookup(self, key: str) -> Option | None:
        return self.options.get(key.strip().lstrip("-").replace("-", "_"))

    def suggest(self, key: str) -> str:
        names = [n for n in self.options if not n.startswith("_")]
        close = difflib.get_close_matches(key.strip().lstrip("-").replace("-", "_"), names, n=1, cutoff=0.75)
        if not close:
            return ""
        return (
            f" (did you mean --{close[0].replace('_', '-')}?)"
            if key.startswith("-")
            else f" (did you mean {close[0]}?)"
        )


_TABLE: OptionTable | None = None


def option_table() -> OptionTable:
    """Every flag/key ``orpo train`` accepts, built once from the dataclasses."""
    global _TABLE
    if _TABLE is not None:
        return _TABLE
    from .config import ORPOConfig
    from .project import DataArguments, ModelArguments

    options: dict[str, Option] = {}
    model = _field_options(ModelArguments, "model")
    data = _field_options(DataArguments, "data")
    config = _field_options(ORPOConfig, "config")
    for option in [*model, *data, *config]:
        if option.name in options:  # pragma: no cover - the dataclasses are checked not to overlap
            raise RuntimeError(f"field {option.name} is defined twice")
        options[option.name] = option
    for alias, (target, origin) in ALIASES.items():
        if alias in options:
            continue
        base = options[target]
        options[alias] = Option(
            alias,
            target,
            "alias",
            base.section,
            base.convert,
            dict(base.argparse_kwargs),
            f"{origin}: --{target.replace('_', '-')}",
            base.is_bool,
        )
    for special in _special_options():
        options.setdefault(special.name, special)
    _TABLE = OptionTable(
        options,
        {o.name for o in model},
        {o.name for o in data},
        {o.name for o in config},
    )
    return _TABLE


def config_field_flags() -> dict[str, list[str]]:
    """{ORPOConfig field: its flags} (for tests and docs)."""
    table = option_table()
    return {name: table.options[name].flags for name in sorted(table.config_fields)}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) and no prefix matching."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        if option.name == "debug" or (option.kind == "special" and option.name in _TEXT_SPECIALS):
            return text
        if option.argparse_kwargs.get("nargs") == "+":
            return text  # converted as a whole list below
        return option.convert(text)

    convert.__name__ = option.name
    return convert


def _finish_value(option: Option, value: Any) -> Any:
    if option.argparse_kwargs.get("nargs") == "+":
        return option.convert(value)
    return value
