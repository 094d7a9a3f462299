"""Every option value is checked once, before anything loads: numbers against the range declared beside their
field (finite unless it says otherwise), texts against their one list of choices; errors name the option as
the user spelled it, the value and the rule."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
from transformers import TrainingArguments

from orpo import DataArguments, ModelArguments, ORPOConfig
from orpo.cli.main import main
from orpo.config import arguments
from orpo.config.options import Entry, Source, option_table
from orpo.config.orpo_config import TRAINING_RULES
from orpo.config.resolve import recipe_source, resolve_values
from orpo.config.rules import PRIVATE_KEYS, Range
from orpo.config.switches import Switches
from orpo.config.usage import UsageError
from orpo.config.values import check_fields, field_kinds, field_metadata

CLASSES = (ModelArguments, DataArguments, ORPOConfig, Switches)
#: The fields whose class their options are built from (for Python construction checks).
OWNER = {f.name: cls for cls in CLASSES for f in dataclasses.fields(cls) if f.init}


def numeric_options():
    return [option for option in option_table().options.values() if option.kind.numeric]


def _declared(name: str) -> Range | None:
    cls = OWNER[name]
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field_metadata(cls, f).get("rule")


def _flags(option, raw: str) -> dict:
    explicit, _ = Source("the command line", [Entry(option, f"--{option.name.replace('_', '-')}", raw)]).values()
    return explicit


def _text(value: float, integer: bool) -> str:
    return str(int(value)) if integer and math.isfinite(value) else repr(value)


def _probes(rule: Range, integer: bool) -> list[tuple[float, bool]]:
    """(value, accepted) at each declared bound: on it, just inside and just outside."""
    out = []
    for bound, on_accepted in rule.edges():
        step_in = 1.0 if bound in (rule.ge, rule.gt) else -1.0
        if integer:
            inside, outside = bound + step_in, bound - step_in
        else:
            inside, outside = math.nextafter(bound, step_in * math.inf), math.nextafter(bound, -step_in * math.inf)
        out += [(bound, on_accepted), (inside, True), (outside, False)]
    return out


# ---- the option table: a numeric field without a declared range fails here ---------------------------------


def test_every_numeric_option_declares_its_range():
    missing = [option.name for option in numeric_options() if _declared(option.name) is None]
    assert not missing, f"declare a Range (or ANY_FINITE / ANY_NUMBER) for: {missing}"


def test_a_mapping_of_numbers_declares_the_range_of_each():
    for cls in CLASSES:
        for name, hint in typing.get_type_hints(cls).items():
            if name in field_kinds(cls) and "dict[str, float]" in str(hint).replace("typing.", ""):
                rule = _declared(name)
                assert rule is not None and rule.each, name


def test_inherited_ranges_are_declared_once_in_one_table():
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert set(TRAINING_RULES) <= inherited
    for f in dataclasses.fields(ORPOConfig):
        if f.name in TRAINING_RULES:
            assert "rule" not in f.metadata, f"{f.name}: declared in its metadata and in TRAINING_RULES"


def test_orpo_metadata_keys_are_out_of_sight_of_argparse():
    """HfArgumentParser passes a field's metadata on to argparse.add_argument, which refuses unknown keys."""
    beta = ORPOConfig.__dataclass_fields__["beta"].metadata
    assert beta.get("rule") == Range(ge=0)
    assert not set(dict(beta)) & set(PRIVATE_KEYS)


def test_the_defaults_are_in_range():
    config = ORPOConfig(output_dir="out")
    check_fields(config)
    for option in numeric_options():
        if option.default is not None:
            option.kind.check(option.default)


@pytest.mark.parametrize("option", numeric_options(), ids=lambda option: option.name)
def test_non_finite_values_are_refused_unless_the_field_allows_inf(option):
    rule = option.kind.rule
    assert rule is not None
    if rule.each:
        for raw in ("NaN", "Infinity", "-Infinity"):
            with pytest.raises(UsageError, match=rf"^--{option.name.replace('_', '-')} \{{'a': -?(nan|inf)\}}: each"):
                _flags(option, f'{{"a": {raw}}}')
        return
    for raw in ("nan", "inf", "-inf"):
        accepted = raw != "nan" and rule.allow_inf and rule.admits(float(raw))
        if accepted:
            assert _flags(option, raw)[option.name] == float(raw)
            continue
        with pytest.raises(UsageError, match=rf"^(argument )?--{option.name.replace('_', '-')}\b"):
            _flags(option, raw)
        if not option.kind.integer:  # an integer field says "expected an integer", from its parser
            with pytest.raises(UsageError, match=rf" {raw}: must be a "):
                _flags(option, raw)


@pytest.mark.parametrize("option", numeric_options(), ids=lambda option: option.name)
def test_each_declared_bound_holds_for_flags_keys_and_python(option, tmp_path):
    rule = option.kind.rule
    assert rule is not None
    integer = option.kind.integer
    flag = f"--{option.name.replace('_', '-')}"
    for value, accepted in _probes(rule, integer):
        if rule.each:
            raw, python_value = f'{{"a": {value!r}}}', {"a": float(value)}
        else:
            raw, python_value = _text(value, integer), int(value) if integer else float(value)
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(f"model_name_or_path: m\n{option.name}: {raw}\n", encoding="utf-8")
        if accepted:
            given = _flags(option, raw)
            assert option.switch is not None or given[option.name] == python_value
            recipe_source(recipe).values()
        else:
            rule_text = rule.describe(integer)
            with pytest.raises(UsageError) as caught:
                _flags(option, raw)
            shown = repr(python_value) if rule.each else raw
            assert str(caught.value) == f"{flag} {shown}: {rule_text}"
            with pytest.raises(UsageError) as caught:
                recipe_source(recipe).values()
            assert str(caught.value) == f"{recipe}, line 2: {option.name}={python_value!r}: {rule_text}"
        cls = OWNER[option.name]
        if cls is Switches:
            continue  # never constructed: a switch only sets other fields
        obj = ORPOConfig(output_dir="out") if cls is ORPOConfig else cls()
        when = option.kind.when
        if when is not None:  # the walk is of the field's own range: set the other field to one that keeps it
            others = option_table().options[when.other].kind.choices
            setattr(obj, when.other, next(choice for choice in others if choice not in when.ranges))
        setattr(obj, option.name, python_value)
        if accepted:
            check_fields(obj)
        else:
            with pytest.raises(ValueError) as caught:
                check_fields(obj)
            assert str(caught.value) == f"{cls.__name__}.{option.name}={python_value!r}: {rule.describe(integer)}"


@pytest.mark.parametrize("option", [o for o in numeric_options() if o.kind.when], ids=lambda option: option.name)
def test_each_range_that_depends_on_another_field_holds_at_its_bounds(option):
    when = option.kind.when
    assert when is not None
    for other_value, rule in when.ranges.items():
        for value, accepted in _probes(rule, option.kind.integer):
            given = {"a": float(value)} if rule.each else float(value)
            obj = OWNER[option.name]()
            setattr(obj, when.other, other_value)
            setattr(obj, option.name, given)
            if accepted:
                check_fields(obj)
                continue
            with pytest.raises(ValueError) as caught:
                check_fields(obj)
            assert str(caught.value) == f"{type(obj).__name__}.{option.name}={given!r}: {rule.describe()}"


# ---- the reported cases -----------------------------------------------------------------------------------


def _one_error(argv, capsys) -> str:
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(lines) == 1
    return lines[0].split(": error: ", 1)[1]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--beta", "nan"], "--beta nan: must be a finite number >= 0"),
        (["--dpo-beta", "inf"], "--dpo-beta inf: must be a finite number >= 0"),
        (["--lr=-1e-5"], "--lr -1e-5: must be a finite number >= 0"),
        (["--warmup-ratio", "-0.1"], "--warmup-ratio -0.1: must be a finite number >= 0"),
        (["--max-grad-norm", "-1"], "--max-grad-norm -1: must be a finite number >= 0 (0: no clipping)"),
        (["--max-length", "0"], "--max-length 0: must be an integer >= 1"),
        (["--seed", "-1"], "--seed -1: must be an integer in [0, 4294967295]"),
        (["--batch-size", "0"], "--batch-size 0: must be an integer >= 1"),
        (
            ["--dataset-mixer", '{"a.jsonl": 0.5, "b.jsonl": NaN}'],
            "--dataset-mixer {'b.jsonl': nan}: each weight must be a finite number >= 0",
        ),
        (
            ["--dataset-mixer", '{"a.jsonl": NaN}', "--dataset-mixing", "probabilities"],
            "--dataset-mixer {'a.jsonl': nan}: each weight must be a finite number >= 0",
        ),
        (
            ["--dataset-mixer", '{"a.jsonl": 2}'],
            "--dataset-mixer {'a.jsonl': 2}: each fraction must be a finite number in [0, 1] "
            "(with dataset_mixing fractions)",
        ),
    ],
)
def test_a_value_out_of_range_is_one_line_naming_the_flag_before_anything_loads(flags, message, capsys):
    # Neither the model nor the data exists: the value is refused first.
    argv = ["train", "--model", "./no-model", "--data-path", "./nowhere.jsonl", *flags]
    assert _one_error(argv, capsys) == message


def test_weights_above_one_are_probabilities_only():
    values, _ = resolve_values(
        Source.from_mapping(
            "settings",
            {"model": "m", "dataset_mixer": {"a.jsonl": 2, "b.jsonl": 1}, "dataset_mixing": "probabilities"},
        )
    )
    assert values["dataset_mixer"] == {"a.jsonl": 2, "b.jsonl": 1}
    with pytest.raises(UsageError, match=r"^settings\.dataset_mixer=\{'a\.jsonl': 2\}: each fraction must be"):
        resolve_values(Source.from_mapping("settings", {"model": "m", "dataset_mixer": {"a.jsonl": 2}}))


def test_a_recipe_names_the_key_and_its_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: m\ndataset_name: d.jsonl\n\nbeta: .nan\n", encoding="utf-8")
    assert _one_error(["train", "--config", str(recipe)], capsys) == f"{recipe}, line 4: beta=nan: " + (
        "must be a finite number >= 0"
    )
    recipe.write_text("model_name_or_path: m\ndataset_mixer:\n  a.jsonl: 0.5\n  b.jsonl: 1.5\n", encoding="utf-8")
    assert _one_error(["train", "--config", str(recipe)], capsys) == (
        f"{recipe}, line 2: dataset_mixer={{'b.jsonl': 1.5}}: each fraction must be a finite number in [0, 1] "
        "(with dataset_mixing fractions)"
    )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ORPOConfig(output_dir="o", beta=float("nan")), "ORPOConfig.beta=nan: must be a finite number >= 0"),
        (
            lambda: ORPOConfig(output_dir="o", learning_rate=-1e-5),
            "ORPOConfig.learning_rate=-1e-05: must be a finite number >= 0",
        ),
        (
            lambda: ORPOConfig(output_dir="o", per_device_train_batch_size=0),
            "ORPOConfig.per_device_train_batch_size=0: must be an integer >= 1",
        ),
        (lambda: ORPOConfig(output_dir="o", max_length=0), "ORPOConfig.max_length=0: must be an integer >= 1"),
        (
            lambda: ORPOConfig(output_dir="o", adam_beta2=1.0),
            "ORPOConfig.adam_beta2=1.0: must be a finite number in [0, 1)",
        ),
        (
            lambda: ModelArguments(lora_dropout=1.0),
            "ModelArguments.lora_dropout=1.0: must be a finite number in [0, 1)",
        ),
        (
            lambda: DataArguments(dataset_mixer={"a": float("nan")}, dataset_mixing="probabilities"),
            "DataArguments.dataset_mixer={'a': nan}: each weight must be a finite number >= 0",
        ),
        (
            lambda: DataArguments(dataset_mixer={"a": 1.5}),
            "DataArguments.dataset_mixer={'a': 1.5}: each fraction must be a finite number in [0, 1] "
            "(with dataset_mixing fractions)",
        ),
    ],
)
def test_python_construction_is_checked_the_same_way(build, message):
    with pytest.raises(ValueError) as caught:
        build()
    assert str(caught.value) == message


def test_values_in_range_that_train_nothing_keep_their_reason(capsys):
    """learning_rate 0 is in range (a finite number >= 0) and refused later, with why, before the data."""
    argv = ["train", "--model", "./no-model", "--data-path", "./nowhere.jsonl", "--lr", "0"]
    assert _one_error(argv, capsys).startswith("nothing would be trained: learning_rate=0 leaves the weights")


# ---- choices: one list each, checked by the converter only ---------------------------------------------------


def test_the_layout_names_are_the_scoring_layouts():
    from orpo.scoring.layouts import Layout

    assert tuple(layout.value for layout in Layout) == arguments.LAYOUT_NAMES
    assert option_table().options["layout"].kind.choices == ("auto", *arguments.LAYOUT_NAMES)


@pytest.mark.parametrize(
    ("cls", "name", "value"),
    [
        (ModelArguments, "dtype", "float8"),
        (ModelArguments, "quantization", "int3"),
        (DataArguments, "dataset_mixing", "mean"),
        (ORPOConfig, "layout", "packed"),
        (ORPOConfig, "on_too_long", "drop_row"),
    ],
)
def test_each_choice_list_is_the_one_its_converter_checks(cls, name, value):
    kind = field_kinds(cls)[name]
    choices = tuple(ORPOConfig.__dataclass_fields__.get(name, cls.__dataclass_fields__[name]).metadata["choices"])
    assert kind.choices == choices
    kwargs = {"output_dir": "o"} if cls is ORPOConfig else {}
    with pytest.raises(ValueError) as caught:
        cls(**kwargs, **{name: value})
    assert str(caught.value) == f"{cls.__name__}.{name}={value!r} is not one of {', '.join(choices)}"
    option = option_table().options[name]
    with pytest.raises(UsageError, match=rf"^argument --{name.replace('_', '-')}: invalid choice {value!r}"):
        _flags(option, value)


def test_no_hand_written_choice_checks_are_left_in_the_arguments():
    assert not hasattr(arguments, "check_choice")
