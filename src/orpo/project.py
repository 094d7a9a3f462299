"""Running a whole training: model + data + ORPOConfig in, trained model, curves and report out.

One engine (:func:`run_training`) behind every front end: ``orpo train`` (flags and YAML
recipes), the ``aitraining``-compatible command, AutoTrain's Python API
(:class:`LLMTrainingParams` + :class:`AutoTrainProject`) and ``orpo demo``.

:class:`ModelArguments` and :class:`DataArguments` hold what ``ORPOConfig`` does not: which model
and data, LoRA, quantization, chat template.  Their field names are TRL's and the
alignment-handbook's (``model_name_or_path``, ``dataset_name``, ``use_peft``...), so handbook
recipes load as they are; AutoTrain's spellings (``--model``, ``--data-path``, ``--peft``...)
are aliases (see :mod:`orpo.cli`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .loading import (
    MIXED_PRECISIONS,
    QUANTIZATIONS,
    UsageError,
    apply_mixed_precision,
    auto_logging_steps,
    check_model_source,
    load_data,
    lora_config,
    model_init_kwargs,
    resolve_chat_template,
)

logger = logging.getLogger(__name__)

DTYPES = ("auto", "bfloat16", "float16", "float32")
SUPPORTED_TRAINERS = ("orpo",)


def _help(text: str, choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"help": text}
    if choices:
        meta["choices"] = list(choices)
    return meta


@dataclass
class ModelArguments:
    """The model to train and how: loading, LoRA, quantization, chat template."""

    model_name_or_path: str | None = field(
        default=None, metadata=_help("Model to fine-tune: a hub id or a local directory (AutoTrain: --model).")
    )
    model_revision: str | None = field(default=None, metadata=_help("Branch, tag or commit of a hub model."))
    dtype: str | None = field(
        default=None, metadata=_help("Dtype the weights are loaded in (default: the model's own).", DTYPES)
    )
    trust_remote_code: bool = field(default=False, metadata=_help("Allow models whose code lives in their repository."))
    attn_implementation: str | None = field(
        default=None, metadata=_help("Attention kernel: eager, sdpa, flash_attention_2, flex_attention...")
    )
    chat_template: str | None = field(
        default=None,
        metadata=_help(
            "Chat template for conversational data: 'tokenizer' (the tokenizer's own, the default), 'chatml', "
            "'zephyr', a Jinja template, or a path to a .jinja file."
        ),
    )
    quantization: str | None = field(
        default=None,
        metadata=_help("Load the base model quantized with bitsandbytes (QLoRA; needs a GPU).", QUANTIZATIONS),
    )
    mixed_precision: str | None = field(
        default=None, metadata=_help("Mixed precision (AutoTrain's switch; same as --bf16 / --fp16).", MIXED_PRECISIONS)
    )
    use_peft: bool = field(
        default=False, metadata=_help("Train a LoRA adapter instead of all weights (AutoTrain: --peft).")
    )
    lora_r: int = field(default=16, metadata=_help("LoRA rank."))
    lora_alpha: int = field(default=32, metadata=_help("LoRA alpha (scale = alpha / r)."))
    lora_dropout: float = field(default=0.05, metadata=_help("Dropout on the LoRA input."))
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata=_help(
            "Modules that get LoRA: 'all-linear' (default) or names, e.g. q_proj,v_proj (AutoTrain: --target-modules)."
        ),
    )
    lora_modules_to_save: list[str] | None = field(
        default=None, metadata=_help("Modules trained in full next to the adapter (e.g. lm_head embed_tokens).")
    )
    merge_adapter: bool = field(
        default=False,
        metadata=_help(
            "After LoRA training, save the merged full model in the output dir (the adapter goes to adapter/)."
        ),
    )


@dataclass
class DataArguments:
    """Where the preference data is and which columns hold what."""

    dataset_name: str | None = field(
        default=None,
        metadata=_help(
            "Preference data: a .jsonl/.json/.csv/.parquet file, a folder, a glob or a hub dataset id (AutoTrain: --data-path)."
        ),
    )
    dataset_config: str | None = field(default=None, metadata=_help("Subset (config name) of a hub dataset."))
    dataset_train_split: str | None = field(
        default=None,
        metadata=_help("Training split, slices allowed: train, train[:1000] (default: train or the only split)."),
    )
    dataset_test_split: str | None = field(
        default=None, metadata=_help("Split to evaluate on, e.g. validation or test (AutoTrain: --valid-split).")
    )
    prompt_text_column: str | None = field(default=None, metadata=_help("Column holding the prompt (default: prompt)."))
    text_column: str | None = field(
        default=None, metadata=_help("Column holding the chosen completion (default: chosen, else text).")
    )
    rejected_text_column: str | None = field(
        default=None, metadata=_help("Column holding the rejected completion (default: rejected).")
    )
    image_column: str | None = field(default=None, metadata=_help("Column holding images, for vision-language models."))
    max_samples: int | None = field(
        default=None, metadata=_help("Use only the first N training pairs (for quick tries).")
    )


# ---------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a training run produced."""

    output_dir: str
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    plot_path: str | None = None
    summary_path: str | None = None
    adapter_dir: str | None = None
    merged: bool = False
    health: list[Any] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)


def build_trainer(
    model_args: ModelArguments,
    data_args: DataArguments | None,
    config: Any,
    *,
    model: Any = None,
    tokenizer: Any = None,
    train_dataset: Any = None,
    eval_dataset: Any = None,
    callbacks: list[Any] | None = None,
    auto_logging: bool = False,
    console: bool = True,
) -> Any:
    """Load model, tokenizer and data and build an :class:`~orpo.ORPOTrainer` with orpo's callbacks."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .callbacks import HealthCallback, LineProgressCallback, TqdmProgressCallback, use_tqdm
    from .modeling import load_model, load_tokenizer
    from .trainer import ORPOTrainer

    if config.output_dir is None:
        raise UsageError("no output directory: pass --output-dir (AutoTrain: --project-name)")
    apply_mixed_precision(config, model_args.mixed_precision)
    if train_dataset is None:
        if data_args is None:
            raise UsageError("no training data")
        train_dataset, eval_loaded = load_data(data_args)
        eval_dataset = eval_dataset if eval_dataset is not None else eval_loaded
    if auto_logging:
        config.logging_steps = auto_logging_steps(len(train_dataset), config)
    if config.dataloader_pin_memory and not _has_accelerator():
        config.dataloader_pin_memory = False  # avoids torch's warning on CPU-only machines
    if eval_dataset is None and config.eval_strategy != "no":
        logger.warning(
            "eval_strategy=%s but no evaluation data: evaluation is off (pass --valid-split)", config.eval_strategy
        )
        config.eval_strategy = "no"
        config.load_best_model_at_end = False
        config.do_eval = False

    template = resolve_chat_template(model_args.chat_template)
    if model is None:
        name = model_args.model_name_or_path
        if not name:
            raise UsageError("no model: pass --model (a hub id or a local directory)")
        check_model_source(name)
        kwargs = model_init_kwargs(model_args, config)
        if tokenizer is None:
            tokenizer = _load_tokenizer_or_fail(load_tokenizer, name, template)
        try:
            model = load_model(name, kwargs)
        except OSError as err:
            raise OSError(f"cannot load model {name!r}: {_first_line(err)}") from err
    elif template is not None and tokenizer is not None:
        getattr(tokenizer, "tokenizer", tokenizer).chat_template = template
        if hasattr(tokenizer, "tokenizer"):
            tokenizer.chat_template = template
    if tokenizer is None:
        raise UsageError("no tokenizer given with the model object")

    peft_config = None
    if model_args.use_peft:
        task = "SEQ_2_SEQ_LM" if getattr(getattr(model, "config", None), "is_encoder_decoder", False) else "CAUSAL_LM"
        peft_config = lora_config(model_args, task)
    elif model_args.quantization is not None:
        raise UsageError("a quantized model can only be trained with a LoRA adapter: add --peft")

    own = [HealthCallback(beta=config.beta, console=console)]
    tqdm_bar = console and not config.disable_tqdm and use_tqdm()
    if console:
        own.insert(0, TqdmProgressCallback() if tqdm_bar else LineProgressCallback())
    trainer = ORPOTrainer(
        model=model,
        args=config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[*own, *(callbacks or [])],
    )
    if console:
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
    trainer.orpo_model_args = model_args
    return trainer


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _load_tokenizer_or_fail(load: Any, name: str, template: str | None) -> Any:
    try:
        return load(name, chat_template=template)
    except OSError as err:
        raise OSError(f"cannot load the tokenizer of {name!r}: {_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def finish_training(
    trainer: Any, *, console: bool = True, resume_from_checkpoint: Any = None, train: bool = True
) -> TrainResult:
    """Train (unless ``train=False``), save the model (and merged model), write curves, summary and health report."""
    from .callbacks import HealthCallback
    from .report import plot_training_curves, summary_table, write_summary

    config = trainer.args
    model_args: ModelArguments = getattr(trainer, "orpo_model_args", ModelArguments())
    train_metrics: dict[str, float] = {}
    if train:
        output = trainer.train(resume_from_checkpoint=resume_from_checkpoint if resume_from_checkpoint else None)
        train_metrics = dict(output.metrics)
    eval_metrics: dict[str, float] = {}
    if trainer.eval_dataset is not None:
        last = next((log for log in reversed(trainer.state.log_history) if "eval_loss" in log), None)
        if last is not None and last.get("step") == trainer.state.global_step and not config.load_best_model_at_end:
            eval_metrics = {key: value for key, value in last.items() if key.startswith("eval_")}
        else:
            eval_metrics = trainer.evaluate()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = TrainResult(output_dir=str(out), train_metrics=train_metrics, eval_metrics=eval_metrics)
    if trainer.is_world_process_zero():
        _save(trainer, model_args, result)
        trainer.save_state()
    result.log_history = list(trainer.state.log_history)
    health = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, HealthCallback)), None)
    if health is not None:
        result.health = health.final_report(result.log_history, trainer.state)
    if trainer.is_world_process_zero():
        result.plot_path = plot_training_curves(result.log_history, out / "training_curves.png")
        result.summary_path = write_summary(out / "training_summary.json", result)
        if console:
            print(summary_table(result), flush=True)
    return result


def _save(trainer: Any, model_args: ModelArguments, result: TrainResult) -> None:
    from .modeling import is_peft_model

    out = Path(result.output_dir)
    model = trainer.model
    processing = trainer.processing_class
    if model_args.use_peft and model_args.merge_adapter and is_peft_model(model):
        adapter_dir = out / "adapter"
        trainer.save_model(str(adapter_dir))
        result.adapter_dir = str(adapter_dir)
        if model_args.quantization is not None:
            from .generation import merge_adapter

            merge_adapter(str(adapter_dir), str(out), base=model_args.model_name_or_path)
        else:
            merged = model.merge_and_unload()
            merged.save_pretrained(str(out))
            if processing is not None:
                processing.save_pretrained(str(out))
            trainer.model = merged
        result.merged = True
    else:
        trainer.save_model(str(out))
        if is_peft_model(model):
            result.adapter_dir = str(out)


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments | None,
    config: Any,
    *,
    console: bool = True,
    auto_logging: bool = False,
    **kwargs: Any,
) -> TrainResult:
    """Build the trainer, train, save, plot, summarise: the whole run."""
    trainer = build_trainer(model_args, data_args, config, console=console, auto_logging=auto_logging, **kwargs)
    return finish_training(trainer, console=console, resume_from_checkpoint=config.resume_from_checkpoint)
