"""AutoTrain's and the alignment-handbook's keys that are not orpo fields, as the fields of :class:`Switches`.

A switch sets other fields (``load_in_4bit: true`` -> ``quantization: int4``) or only checks a value
(``trainer: orpo``).  Each field's metadata holds a :class:`Switch` saying which: every route
(``orpo train`` flags and recipes, ``aitraining llm``, ``LLMTrainingParams``) applies it the same way, in
:func:`orpo.config.options.Source.values`.  A switch given ``false`` turns its effect off (``--no-load-in-4bit``
after a recipe's ``load_in_4bit: true`` leaves the model unquantized).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orpo.config.arguments import MIXED_PRECISIONS
from orpo.config.rules import Range
from orpo.config.usage import UsageError

Effect = Callable[[Any], dict[str, Any]]


def _nothing(value: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Switch:
    """What a switch's value sets.

    ``sets(value)``: fields set as if given by their own name (another key of the same source setting one of
    them is an error).  ``implies(value)``: fields set only where the same source sets them no other way (the
    "off" value of a switch, a fallback such as ``model_max_length``).  Either may raise :class:`UsageError`.
    """

    targets: tuple[str, ...]
    sets: Effect = _nothing
    implies: Effect = _nothing


def toggle(target: str, on: Any, off: Any) -> Switch:
    """A boolean switch: true sets ``target`` to ``on``; false means ``off`` unless the source sets it otherwise."""
    return Switch(
        (target,),
        sets=lambda value: {target: on} if value else {},
        implies=lambda value: {target: off} if value is False else {},
    )


def refuse(allowed: Callable[[Any], bool], message: Callable[[Any], str]) -> Switch:
    """A key that sets nothing and only accepts some values."""

    def check(value: Any) -> dict[str, Any]:
        if not allowed(value):
            raise UsageError(message(value))
        return {}

    return Switch((), sets=check)


def check_trainer(value: Any) -> dict[str, Any]:
    if value is not None and str(value).strip().lower() != "orpo":
        raise UsageError(
            f"trainer {value!r} is not supported: orpo trains ORPO only (trainer orpo); "
            "use AutoTrain or TRL for sft, dpo, reward or ppo"
        )
    return {}


BACKENDS = ("local", "local-cli", "local-ui")


def check_backend(value: Any) -> dict[str, Any]:
    if value is not None and value not in BACKENDS:
        raise UsageError(f"backend {value!r} is not supported: orpo trains in this process (backend local)")
    return {}


def _positive_max_length(value: int | None) -> dict[str, Any]:
    return {"max_length": value} if value is not None and value > 0 else {}


def _mixed_precision(value: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    return {"fp16": value == "fp16", "bf16": value == "bf16"}


def _both_batch_sizes(value: int | None) -> dict[str, Any]:
    return {} if value is None else {"per_device_train_batch_size": value}


def _eval_batch_size(value: int | None) -> dict[str, Any]:
    return {} if value is None else {"per_device_eval_batch_size": value}


def _splits(value: list[str] | None) -> dict[str, Any]:
    splits = list(value or [])
    if len(splits) > 2:
        raise UsageError(f"dataset_splits takes [train split, test split], got {len(splits)} splits")
    return dict(zip(("dataset_train_split", "dataset_test_split"), splits, strict=False))


def _switch(
    help_text: str, switch: Switch, choices: tuple[str, ...] | None = None, rule: Range | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"help": help_text, "switch": switch}
    if choices:
        out["choices"] = list(choices)
    if rule is not None:
        out["rule"] = rule
    return out


@dataclass
class Switches:
    """Keys of AutoTrain and the alignment-handbook that set orpo fields or only check a value (never stored)."""

    batch_size: int | None = field(
        default=None,
        metadata=_switch(
            "AutoTrain: per-device batch size for training and, unless set, evaluation.",
            Switch(
                ("per_device_train_batch_size", "per_device_eval_batch_size"),
                sets=_both_batch_sizes,
                implies=_eval_batch_size,
            ),
            rule=Range(ge=1),
        ),
    )
    block_size: int | None = field(
        default=None,
        metadata=_switch(
            "AutoTrain: max_length (-1: keep the default).",
            Switch(("max_length",), _positive_max_length),
            rule=Range(note="below 1: keep the default"),
        ),
    )
    model_max_length: int | None = field(
        default=None,
        metadata=_switch(
            "AutoTrain: max_length when neither max_length nor block_size is given.",
            Switch(("max_length",), implies=_positive_max_length),
            rule=Range(note="below 1: keep the default"),
        ),
    )
    mixed_precision: str | None = field(
        default=None,
        metadata=_switch(
            "AutoTrain: fp16 or bf16 mixed precision (sets --fp16 / --bf16), or no.",
            Switch(("fp16", "bf16"), sets=_mixed_precision),
            MIXED_PRECISIONS,
        ),
    )
    use_flash_attention_2: bool | None = field(
        default=None,
        metadata=_switch(
            "attn_implementation=flash_attention_2 (false: the default kernel).",
            toggle("attn_implementation", "flash_attention_2", None),
        ),
    )
    load_in_4bit: bool | None = field(
        default=None,
        metadata=_switch("alignment-handbook: quantization=int4 (false: none).", toggle("quantization", "int4", None)),
    )
    load_in_8bit: bool | None = field(
        default=None,
        metadata=_switch("alignment-handbook: quantization=int8 (false: none).", toggle("quantization", "int8", None)),
    )
    disable_gradient_checkpointing: bool | None = field(
        default=None,
        metadata=_switch(
            "AutoTrain: activation_checkpointing=false (false: true).",
            toggle("activation_checkpointing", False, True),
        ),
    )
    username: str | None = field(
        default=None,
        metadata=_switch(
            "AutoTrain: hub user; with push_to_hub, hub_model_id defaults to USER/<output dir name>.",
            Switch((), sets=lambda value: {} if value is None else {"username": value}),
        ),
    )
    dataset_splits: list[str] | None = field(
        default=None,
        metadata=_switch(
            "alignment-handbook: [train split, test split].",
            Switch(("dataset_train_split", "dataset_test_split"), _splits),
        ),
    )
    trainer: str | None = field(
        default=None, metadata=_switch("AutoTrain's trainer; only orpo.", Switch((), sets=check_trainer))
    )
    backend: str | None = field(
        default=None,
        metadata=_switch("AutoTrain's backend; only local (this process).", Switch((), sets=check_backend)),
    )
    padding: str | None = field(
        default=None,
        metadata=_switch(
            "AutoTrain; ignored (batches are right-padded).",
            refuse(lambda v: v in (None, "right", "left"), lambda v: f"padding must be right or left, got {v!r}"),
        ),
    )
    add_eos_token: bool | None = field(
        default=None,
        metadata=_switch(
            "AutoTrain; orpo always ends completions with EOS.",
            refuse(
                lambda v: v is not False,
                lambda v: "add_eos_token=false is not supported: orpo ends every completion with EOS exactly once",
            ),
        ),
    )
    model_ref: str | None = field(
        default=None,
        metadata=_switch(
            "AutoTrain (DPO); ORPO uses no reference model.",
            refuse(lambda v: v in (None, "", "none", "None"), lambda v: "ORPO uses no reference model: drop model_ref"),
        ),
    )
    unsloth: bool | None = field(
        default=None,
        metadata=_switch(
            "AutoTrain; not supported.",
            refuse(lambda v: not v, lambda v: "unsloth is not supported by orpo: drop unsloth"),
        ),
    )
    overwrite_output_dir: bool | None = field(
        default=None, metadata=_switch("Accepted for old recipes; orpo writes into the output dir.", Switch(()))
    )
    distributed_backend: str | None = field(
        default=None,
        metadata=_switch("AutoTrain; accepted and ignored (use accelerate launch for several GPUs).", Switch(())),
    )
