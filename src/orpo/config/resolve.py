"""The one conversion from given settings to ``(ModelArguments, DataArguments, ORPOConfig)``.

``orpo train`` (flags over a recipe), ``aitraining llm`` and ``LLMTrainingParams.to_args()`` all call
:func:`resolve`; they differ only in their sources and, for AutoTrain, in its defaults (a lower source and
a ``fill`` for the defaults that depend on other values).  Rules every route shares, decided here once:

- ``max_prompt_length`` is used as given, also when it is not below ``max_length`` (as TRL does); pairs
  left without room for a completion are dropped and counted in the data report.
- Every value is in its field's choices and range (:mod:`orpo.config.rules`), checked as it is read,
  before anything loads; a range that depends on another field once the sources are merged.
- ``logging_steps`` not given, or negative (AutoTrain's -1), means about 20 logged points per run, picked
  by the run engine once the data size is known (:attr:`ResolvedArgs.auto_logging`).
- Without an output dir a run goes to ``runs/<model name>-orpo``; with ``push_to_hub`` and a ``username``,
  ``hub_model_id`` defaults to ``<username>/<output dir name>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orpo.config.arguments import DataArguments, ModelArguments, ORPOArguments
from orpo.config.extras import check_requirements
from orpo.config.options import Entry, OptionTable, Source, check_dependent_ranges, merge, option_table
from orpo.config.usage import UsageError

if TYPE_CHECKING:
    from orpo.config.orpo_config import ORPOConfig

Fill = Callable[[Mapping[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True)
class ResolvedArgs:
    """What a run needs, and the settings it came from (``values``: field -> value, as a recipe would say)."""

    model: ModelArguments
    data: DataArguments
    config: ORPOConfig
    auto_logging: bool = False
    values: dict[str, Any] = field(default_factory=dict)


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, KeyError):
        text = f"missing key {text}"
    return text or type(err).__name__


def _hub_model_id(values: dict[str, Any], username: str | None) -> None:
    if username and values.get("push_to_hub") and not values.get("hub_model_id"):
        values["hub_model_id"] = f"{username}/{Path(values['output_dir']).name}"


def resolve(*sources: Source, fill: Fill | None = None, table: OptionTable | None = None) -> ResolvedArgs:
    """Sources, lowest priority first -> the run's arguments; every user error is a :class:`UsageError`.

    ``fill(values)`` gives defaults for fields the sources left unset (a route's defaults that depend on
    other settings, e.g. AutoTrain's evaluation per epoch when there is a validation split).  Options that
    ``TrainingArguments`` itself cannot take on this machine (deepspeed missing, bf16 or tf32 without a GPU, a
    parallelism_config on one process) are refused first, in orpo's words (:mod:`orpo.config.extras`).
    """
    from orpo.config.orpo_config import ORPOConfig

    table = table or option_table()
    values, auto_logging = resolve_values(*sources, fill=fill, table=table)
    # deepspeed, bf16, tf32, parallelism_config: before TrainingArguments, whose own checks fail in other words
    # (the run engine checks the other options' packages and hardware before it loads anything).
    check_requirements(values, stages=("resolve",))
    config_fields = table.names("orpo") | table.names("training")
    config_values = {k: v for k, v in values.items() if k in config_fields}
    if auto_logging:
        config_values.pop("logging_steps", None)
    try:
        model = ModelArguments(**{k: v for k, v in values.items() if k in table.names("model")})
        data = DataArguments(**{k: v for k, v in values.items() if k in table.names("data")})
        config = ORPOConfig(**config_values)
    except (ValueError, TypeError) as err:
        raise UsageError(one_line(err)) from None
    return ResolvedArgs(model, data, config, auto_logging, values)


def resolve_values(
    *sources: Source, fill: Fill | None = None, table: OptionTable | None = None
) -> tuple[dict[str, Any], bool]:
    """The settings a run would get (field -> value) and whether logging steps are automatic, checked as far
    as they can be without this machine: ``TrainingArguments``' hardware checks (bf16, GPUs) are left to
    :func:`resolve`, so ``--print-config`` can write a recipe here for another machine."""

    table = table or option_table()
    values = merge(*sources)
    username = values.pop("username", None)
    for name, value in (fill(values) if fill else {}).items():
        values.setdefault(name, value)
    model_name = values.get("model_name_or_path")
    if not model_name:
        raise UsageError("no model: pass --model (a hub id or a local directory)")
    if not any(values.get(name) for name in ("dataset_name", "dataset_mixer", "dataset_mixture")):
        raise UsageError(
            "no training data: pass --data-path (a file, folder, glob or hub dataset id), dataset_mixer or "
            "dataset_mixture"
        )
    if not values.get("output_dir"):
        values["output_dir"] = str(Path("runs") / f"{Path(str(model_name).rstrip('/')).name or 'model'}-orpo")
    _hub_model_id(values, username)
    check_dependent_ranges(values, sources, table)
    logging_steps = values.get("logging_steps")
    auto_logging = logging_steps is None or logging_steps < 0
    try:
        ModelArguments(**{k: v for k, v in values.items() if k in table.names("model")})
        DataArguments(**{k: v for k, v in values.items() if k in table.names("data")})
        orpo_fields = ORPOArguments(**{k: v for k, v in values.items() if k in table.names("orpo")})
        orpo_fields.check_orpo_fields("ORPOConfig")  # the class these fields are set on
    except (ValueError, TypeError) as err:
        raise UsageError(one_line(err)) from None
    return values, auto_logging


def recipe_source(path: str | Path, table: OptionTable | None = None) -> Source:
    """A YAML recipe as a :class:`Source` (its keys' line numbers kept for errors)."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    loader = yaml.SafeLoader(file.read_text(encoding="utf-8"))
    try:
        root = loader.get_single_node()
        if root is None:
            return Source(str(path), [], "keys")
        if not isinstance(root, yaml.MappingNode):
            raise UsageError(f"{path}: expected a mapping of option: value, got {root.tag.rsplit(':', 1)[-1]}")
        pairs = [
            (loader.construct_object(key, deep=True), loader.construct_object(value, deep=True), key.start_mark.line)
            for key, value in root.value
        ]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"{path}{where}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    table = table or option_table()
    entries = []
    for key, value, line in pairs:
        option = table.lookup(str(key))
        if option is None:
            raise UsageError(f"{path}, line {line + 1}: unknown key {key!r}{table.suggest(str(key))}")
        entries.append(Entry(option, str(key), value, line + 1))
    return Source(str(path), entries, "keys")
