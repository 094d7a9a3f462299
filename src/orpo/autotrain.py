"""AutoTrain's interface to ORPO: ``LLMTrainingParams``, ``AutoTrainProject`` and ``aitraining llm``.

Field names and defaults are those of AutoTrain's LLM trainer (``autotrain.trainers.clm.params``)
so its documented ORPO Quick Start and Python API run unchanged; :meth:`LLMTrainingParams.to_args`
maps them onto ``ModelArguments`` / ``DataArguments`` / ``ORPOConfig`` the way AutoTrain's own
``configure_training_args`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .options import ArgumentParser, _argparse_type, _field_options, _finish_value
from .project import SUPPORTED_TRAINERS, DataArguments, ModelArguments, TrainResult, UsageError, run_training

EXIT_USAGE = 2


@dataclass
class LLMTrainingParams:
    """AutoTrain's ``LLMTrainingParams`` (the LLM trainer's parameters), for ORPO.

    Field names and defaults are AutoTrain's (``autotrain.trainers.clm.params``), except:
    ``trainer`` defaults to ``"orpo"`` (the only trainer here) and ``log`` to ``"none"`` (no
    tracker is installed by default).  Fields for other trainers (SFT, DPO's ``model_ref``,
    PPO, distillation, sweeps) are not here; passing one is an error.
    """

    model: str = "google/gemma-3-270m"
    project_name: str = "project-name"

    # data
    data_path: str = "data"
    train_split: str = "train"
    valid_split: str | None = None
    max_samples: int | None = None
    add_eos_token: bool = True
    block_size: int = -1
    model_max_length: int = 2048
    padding: str | None = "right"

    # trainer
    trainer: str = "orpo"
    use_flash_attention_2: bool = False
    attn_implementation: str | None = None
    log: str = "none"
    disable_gradient_checkpointing: bool = False
    logging_steps: int = -1
    eval_strategy: str = "epoch"
    save_strategy: str = "epoch"
    save_steps: int = 500
    save_total_limit: int = 1
    auto_find_batch_size: bool = False
    mixed_precision: str | None = None
    lr: float = 3e-5
    epochs: int = 1
    batch_size: int = 2
    warmup_ratio: float = 0.1
    gradient_accumulation: int = 4
    optimizer: str = "adamw_torch"
    scheduler: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    chat_template: str | None = None

    # peft
    quantization: str | None = None
    target_modules: str | None = "all-linear"
    merge_adapter: bool = True
    peft: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05

    # dpo / orpo
    model_ref: str | None = None
    dpo_beta: float = 0.1
    max_prompt_length: int = 128
    max_completion_length: int | None = None

    # columns
    prompt_text_column: str | None = None
    text_column: str = "text"
    rejected_text_column: str | None = None
    image_column: str | None = None

    # hub
    push_to_hub: bool = False
    username: str | None = None
    token: str | None = None
    repo_id: str | None = None

    # not supported here, accepted so configs port
    unsloth: bool = False
    distributed_backend: str | None = None

    def __post_init__(self) -> None:
        trainer = (self.trainer or "orpo").strip().lower()
        if trainer not in SUPPORTED_TRAINERS:
            raise UsageError(
                f"trainer {self.trainer!r} is not supported: orpo trains ORPO only (trainer='orpo'); "
                "use AutoTrain itself for sft/dpo/reward/ppo"
            )
        self.trainer = trainer
        if self.unsloth:
            raise UsageError("unsloth is not supported by orpo; drop unsloth=True")
        if self.model_ref is not None:
            raise UsageError("ORPO uses no reference model; drop model_ref")
        if not self.add_eos_token:
            raise UsageError("orpo always ends every completion with EOS (add_eos_token=False is not supported)")
        if self.padding not in (None, "right", "left"):
            raise UsageError(f"padding must be 'right' or 'left', got {self.padding!r}")
        if self.quantization in ("none", ""):
            self.quantization = None
        if self.mixed_precision in ("none", ""):
            self.mixed_precision = None

    def to_args(self) -> tuple[ModelArguments, DataArguments, Any]:
        """The equivalent (ModelArguments, DataArguments, ORPOConfig)."""
        from .config import ORPOConfig

        has_valid = self.valid_split is not None
        targets = None
        if self.target_modules:
            targets = [t.strip() for t in str(self.target_modules).split(",") if t.strip()]
        model_args = ModelArguments(
            model_name_or_path=self.model,
            attn_implementation="flash_attention_2" if self.use_flash_attention_2 else self.attn_implementation,
            chat_template=self.chat_template,
            quantization=self.quantization,
            mixed_precision=self.mixed_precision,
            use_peft=self.peft,
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            lora_target_modules=targets,
            merge_adapter=self.merge_adapter,
        )
        data_args = DataArguments(
            dataset_name=self.data_path,
            dataset_train_split=self.train_split,
            dataset_test_split=self.valid_split,
            prompt_text_column=self.prompt_text_column,
            # AutoTrain's default "text" also finds a "chosen" column (see ColumnMapping).
            text_column=None if self.text_column == "text" else self.text_column,
            rejected_text_column=self.rejected_text_column,
            image_column=self.image_column,
            max_samples=self.max_samples,
        )
        max_length = self.block_size if self.block_size and self.block_size > 0 else self.model_max_length
        max_prompt_length = self.max_prompt_length
        if max_prompt_length is not None and max_prompt_length >= max_length:
            max_prompt_length = max(1, max_length // 2)
        gradient_checkpointing = not self.disable_gradient_checkpointing
        config = ORPOConfig(
            output_dir=self.project_name,
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=self.batch_size,
            learning_rate=self.lr,
            num_train_epochs=self.epochs,
            eval_strategy=self.eval_strategy if has_valid else "no",
            logging_steps=self.logging_steps if self.logging_steps > 0 else 500,
            save_total_limit=self.save_total_limit,
            save_strategy=(self.eval_strategy if has_valid else "no")
            if self.save_strategy == "epoch"
            else self.save_strategy,
            save_steps=self.save_steps,
            gradient_accumulation_steps=self.gradient_accumulation,
            report_to=self.log,
            auto_find_batch_size=self.auto_find_batch_size,
            lr_scheduler_type=self.scheduler,
            optim=self.optimizer,
            warmup_steps=self.warmup_ratio,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            seed=self.seed,
            load_best_model_at_end=has_valid and self.save_strategy == "epoch",
            activation_checkpointing=gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
            beta=self.dpo_beta,
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            max_completion_length=self.max_completion_length,
            push_to_hub=self.push_to_hub,
            hub_model_id=self.repo_id
            or (f"{self.username}/{self.project_name}" if self.username and self.push_to_hub else None),
            hub_token=self.token,
            fp16=self.mixed_precision == "fp16",
            bf16=self.mixed_precision == "bf16",
        )
        return model_args, data_args, config

    def save(self, output_dir: str | os.PathLike) -> Path:
        path = Path(output_dir) / "training_params.json"
        values = dataclasses.asdict(self)
        values.pop("token", None)
        path.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
        return path


class AutoTrainProject:
    """AutoTrain's ``AutoTrainProject``: ``AutoTrainProject(params=..., backend="local").create()``.

    Only the ``local`` backend exists here: ``create()`` trains in this process, writes the
    model, ``training_curves.png``, ``training_summary.json`` and ``training_params.json`` to
    ``params.project_name`` and returns the :class:`TrainResult`.
    """

    def __init__(self, params: LLMTrainingParams, backend: str = "local", process: bool = True) -> None:
        if not isinstance(params, LLMTrainingParams):
            raise TypeError(f"params must be an orpo.LLMTrainingParams, got {type(params).__name__}")
        if backend not in ("local", "local-cli", "local-ui"):
            raise UsageError(f"backend {backend!r} is not supported: orpo trains in-process (backend='local')")
        self.params = params
        self.backend = backend
        self.process = process

    def create(self, console: bool = True) -> TrainResult:
        model_args, data_args, config = self.params.to_args()
        result = run_training(
            model_args, data_args, config, console=console, auto_logging=self.params.logging_steps <= 0
        )
        self.params.save(result.output_dir)
        return result


def build_aitraining_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="aitraining llm",
        description="AutoTrain-compatible LLM command (ORPO only): aitraining llm --train --trainer orpo ...",
    )
    parser.add_argument("--train", action="store_true", help="Train (the only action supported).")
    parser.add_argument("--deploy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--interactive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="local", help="Only 'local' (train in this process).")
    for option in _field_options(LLMTrainingParams, "autotrain"):
        kwargs = dict(option.argparse_kwargs)
        kwargs["type"] = _argparse_type(option)
        parser.add_argument(
            *option.flags, dest=f"opt:{option.name}", default=argparse.SUPPRESS, help=option.help, **kwargs
        )
    return parser


def aitraining_main(argv: list[str] | None = None) -> int:
    """``aitraining llm --train --model M --data-path D --project-name P --trainer orpo ...``"""
    from .cli import _strip_debug, run_command, setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    argv, debug = _strip_debug(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: aitraining llm --train --trainer orpo --model MODEL --data-path DATA --project-name NAME [options]\n\n"
            "AutoTrain-compatible command provided by orpo: only `llm` with --trainer orpo.\n"
            "Run `aitraining llm --help` for the options."
        )
        return 0 if argv else EXIT_USAGE
    if argv[0] in ("--version", "-V"):
        from . import __version__

        print(f"aitraining (orpo {__version__})")
        return 0
    if argv[0] != "llm":
        print(
            f"aitraining: error: command {argv[0]!r} is not provided by orpo; only `aitraining llm --trainer orpo` is",
            file=sys.stderr,
        )
        return EXIT_USAGE
    setup_logging()
    return run_command(_aitraining_llm, argv[1:], "aitraining llm", debug)


def _aitraining_llm(argv: list[str]) -> int:
    parser = build_aitraining_parser()
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [item for item in unknown if item.startswith("-")]
        if flags:
            names = [a.option_strings[0].lstrip("-") for a in parser._actions if a.option_strings]
            close = difflib.get_close_matches(flags[0].lstrip("-").replace("-", "_"), names, n=1, cutoff=0.75)
            hint = f" (did you mean --{close[0].replace('_', '-')}?)" if close else ""
            raise UsageError(f"unknown flag {flags[0].split('=')[0]}{hint} (see aitraining llm --help)")
        raise UsageError(f"unexpected argument {unknown[0]!r}")
    for flag in ("deploy", "inference", "interactive"):
        if getattr(namespace, flag):
            raise UsageError(f"--{flag} is not supported by orpo; use --train (and `orpo generate` / `orpo chat`)")
    if not namespace.train:
        raise UsageError("nothing to do: pass --train")
    options = {o.name: o for o in _field_options(LLMTrainingParams, "autotrain")}
    values = {}
    for key, value in vars(namespace).items():
        if key.startswith("opt:"):
            name = key[4:]
            try:
                values[name] = _finish_value(options[name], value)
            except argparse.ArgumentTypeError as err:
                raise UsageError(f"argument --{name.replace('_', '-')}: {err}") from None
    params = LLMTrainingParams(**values)
    print(
        f"aitraining llm (orpo): model {params.model} | data {params.data_path} | trainer orpo | "
        f"peft {params.peft} | project {params.project_name}",
        flush=True,
    )
    AutoTrainProject(params=params, backend=namespace.backend).create()
    return 0
