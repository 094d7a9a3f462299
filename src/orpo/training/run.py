"""The run engine: model + data + ORPOConfig in, trained model, curves and report out.

One engine (:func:`run_training`) behind every front end: ``orpo train`` (flags and YAML recipes), the
``aitraining``-compatible command, AutoTrain's Python API (``LLMTrainingParams`` + ``AutoTrainProject``)
and ``orpo demo``.  The caller's ``ORPOConfig`` is never changed: what only the run knows (the data size
for automatic logging steps, whether there is evaluation data, whether pinned memory helps) goes into a
copy, :func:`run_config`, which the trainer gets.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orpo.config.arguments import DataArguments, ModelArguments
from orpo.config.extras import check_requirements
from orpo.config.usage import UsageError
from orpo.models.adapters import attach_start_adapter, check_start_adapter, start_adapter_base
from orpo.models.sources import check_model_source, lora_config, model_init_kwargs, model_source, resolve_chat_template
from orpo.training.card import write_model_card
from orpo.training.distributed import launch_changes, quiet_replicas, save_final
from orpo.training.inputs import auto_logging_steps, load_data
from orpo.training.reliability import fit
from orpo.training.runlock import holding

if TYPE_CHECKING:
    from orpo.config.orpo_config import ORPOConfig
    from orpo.training.trainer import ORPOTrainer

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced.

    ``plot_path`` and ``summary_path`` are set on the main process only (None on the others).

    Attributes:
        output_dir: the folder the model (or adapter, or merged model), card, state and summary were saved to.
        train_metrics: the metrics ``Trainer.train`` returned (``train_loss``, ``train_runtime``, ``epoch``...);
            empty when the run did not train.
        eval_metrics: ``eval_``-prefixed metrics of the final model: the last evaluation's when it was at the
            last step (and ``load_best_model_at_end`` is off), else a fresh one; empty without evaluation data.
        plot_path: the training curves PNG; None when nothing was logged.
        summary_path: ``training_summary.json``.
        adapter_dir: where the LoRA adapter was saved (``output_dir``, or ``output_dir/adapter`` when merged);
            None for a full model.
        merged: whether the adapter was merged into the model saved in ``output_dir``.
        health: the health check's verdict (:class:`~orpo.training.health.Finding` objects).
        log_history: every log entry of the run (``trainer.state.log_history``).
        steps_run: optimizer steps this run made (a resumed run: those after its checkpoint); None when it did
            not train.
        first_step: the global step it started from (a resumed checkpoint's, else 0).
        resumed_from: the checkpoint folder it resumed from, or None.
        pairs_per_step: pairs per optimizer step over all processes (per-device batch x processes x
            accumulation); 0 when it did not train.
    """

    output_dir: str
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    plot_path: str | None = None
    summary_path: str | None = None
    adapter_dir: str | None = None
    merged: bool = False
    health: list[Any] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    #: Optimizer steps this run made (a resumed run: those after its checkpoint), from ``first_step`` on.
    steps_run: int | None = None
    first_step: int = 0
    resumed_from: str | None = None
    #: Pairs per optimizer step over all processes (per-device batch x processes x accumulation).
    pairs_per_step: int = 0


def build_trainer(
    model_args: ModelArguments,
    data_args: DataArguments | None,
    config: ORPOConfig,
    *,
    model: Any = None,
    tokenizer: Any = None,
    train_dataset: Any = None,
    eval_dataset: Any = None,
    callbacks: list[Any] | None = None,
    auto_logging: bool = False,
    console: bool = True,
    resume_command: str | None = None,
) -> ORPOTrainer:
    """Load model, tokenizer and data and build an :class:`~orpo.ORPOTrainer` with orpo's callbacks.

    The trainer's ``args`` are :func:`run_config`'s copy of ``config``; ``config`` itself is left as it is.
    Settings that would train nothing are refused before any data is loaded.

    Args:
        model_args: the model to load (``--model``, revision, quantization, LoRA and start-adapter options).
        data_args: the data to load; None when ``train_dataset`` is given.
        config: the training settings; copied, never changed.
        model: a loaded model (or a hub id or folder) to use instead of ``model_args.model_name_or_path``.
        tokenizer: a tokenizer or processor to use instead of the model's own.
        train_dataset: preference data to use instead of loading ``data_args``.
        eval_dataset: evaluation data; wins over the split ``data_args`` names.
        callbacks: more ``TrainerCallback`` objects, after orpo's own.
        auto_logging: set ``logging_steps`` from the data size (about 20 logs per run, like AutoTrain's -1).
        console: a progress bar (or progress lines) in place of Trainer's; False keeps Trainer's callbacks.
        resume_command: the command line that resumes this run, for the messages of an interrupted or failed
            one (``orpo train`` passes it).

    Raises:
        UsageError: no output directory, no data, no model, settings that would train nothing, a missing
            optional package, or a quantized model without LoRA.
    """
    import datasets
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from orpo.training.trainer import ORPOTrainer

    _check_before_loading(model_args, data_args, config, model)
    quiet_replicas()
    train_dataset, eval_dataset = _training_data(data_args, train_dataset, eval_dataset)
    pairs = None if isinstance(train_dataset, datasets.IterableDataset) else len(train_dataset)
    config = run_config(config, pairs=pairs, has_eval=eval_dataset is not None, auto_logging=auto_logging)

    model, tokenizer = _model_and_tokenizer(model_args, config, model, tokenizer)
    trainer = ORPOTrainer(
        model=model,
        args=config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=_peft_config(model_args, model),
        callbacks=[*_own_callbacks(config, console), *(callbacks or [])],
    )
    if console:
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
    trainer.resume_command = resume_command
    if data_args is not None and isinstance(data_args.dataset_name, str):
        trainer.train_source = data_args.dataset_name
    return trainer


def _settings(*objects: Any) -> dict[str, Any]:
    """field -> value of the given dataclasses (None: skipped), as a recipe would say them."""
    return {
        f.name: getattr(obj, f.name) for obj in objects if obj is not None for f in dataclasses.fields(obj) if f.init
    }


def _check_before_loading(
    model_args: ModelArguments, data_args: DataArguments | None, config: ORPOConfig, model: Any
) -> None:
    """Refuse settings that would fail or train nothing before any data or model is loaded."""
    from orpo.training.reliability.preflight import check_training_amounts

    if config.output_dir is None:
        raise UsageError("no output directory: pass --output-dir (AutoTrain: --project-name)")
    try:
        check_training_amounts(config)
    except ValueError as err:
        raise UsageError(str(err)) from None
    # packages, GPU, processes (orpo.config.extras), before any data or model
    check_requirements(_settings(config, model_args, data_args))
    if model is None:
        check_start_adapter(model_args)
    if model_args.use_peft:
        lora_config(model_args)  # bad LoRA options fail here, not after the data is prepared


def _training_data(data_args: DataArguments | None, train_dataset: Any, eval_dataset: Any) -> tuple[Any, Any]:
    """The given datasets, or those ``data_args`` name (a given ``eval_dataset`` wins over the loaded one)."""
    if train_dataset is not None:
        return train_dataset, eval_dataset
    if data_args is None:
        raise UsageError("no training data")
    train_dataset, eval_loaded = load_data(data_args)
    return train_dataset, eval_dataset if eval_dataset is not None else eval_loaded


def _peft_config(model_args: ModelArguments, model: Any) -> Any:
    """The new LoRA adapter's config (its task from the model's kind), or None without ``--peft``."""
    from orpo.models.kinds import kind_of

    if model_args.use_peft:
        return lora_config(model_args, kind_of(model).peft_task)
    if model_args.quantization is not None:
        raise UsageError("a quantized model can only be trained with a LoRA adapter: add --peft")
    return None


def _own_callbacks(config: ORPOConfig, console: bool) -> list[Any]:
    """orpo's callbacks: the health check and, on a console, a progress bar (or lines where tqdm cannot draw)."""
    from orpo.training.callbacks import LineProgressCallback, TqdmProgressCallback, use_tqdm
    from orpo.training.health import HealthCallback

    own: list[Any] = [HealthCallback(beta=config.beta, console=console)]
    if console:
        tqdm_bar = not config.disable_tqdm and use_tqdm()
        own.insert(0, TqdmProgressCallback() if tqdm_bar else LineProgressCallback())
    return own


def check_resume(model_args: ModelArguments, config: ORPOConfig) -> str | None:
    """With ``resume_from_checkpoint``: the checkpoint found, verified and checked against the model (adapter or
    full, its sizes) before any data is loaded; None without.

    Args:
        model_args: the run's model options (whether it trains an adapter, the base model to compare with).
        config: the run's settings (``resume_from_checkpoint``, ``output_dir``, the processes).

    Raises:
        ValueError: no complete checkpoint to resume from, the one named does not verify, or it does not fit
            the model (adapter against full model, different sizes).
    """
    from orpo.training.reliability.resume import resolve_resume

    if not config.resume_from_checkpoint or config.output_dir is None:
        return None
    output_dir = str(config.output_dir)
    path = resolve_resume(config.resume_from_checkpoint, output_dir, config.world_size, config.process_index)
    if path is None:
        return None
    base = start_adapter_base(model_args)  # --model a LoRA adapter: trained on as one unless merged first
    adapter = model_args.use_peft or (base is not None and not model_args.merge_start_adapter)
    fit.check_kind(path, adapter=adapter)
    name = base or model_args.model_name_or_path
    if name and fit.checkpoint_kind(path) == "full":
        from orpo.models.loading import saved_config

        # None where there is no readable config: loading the model names the problem.
        fit.check_model(path, saved_config(name, model_source(model_args, config)))
    return path


def _model_and_tokenizer(model_args: ModelArguments, config: ORPOConfig, model: Any, tokenizer: Any) -> tuple[Any, Any]:
    """The given model and tokenizer, or those ``--model`` names (a start adapter: on its base), through the
    loader ``ORPOTrainer(model="id")`` uses, with the chosen chat template."""
    from orpo.models.loading import load_model_and_processor
    from orpo.scoring.moe import apply_router_options

    template = resolve_chat_template(model_args.chat_template)
    # Only where something is loaded (a quantization config needs a GPU); they carry model_source's revision and
    # trust_remote_code.
    kwargs = model_init_kwargs(model_args, config) if model is None or tokenizer is None else None
    resize = model_args.resize_embeddings
    if resize and model_args.use_peft and not set(model_args.lora_modules_to_save or []) & _EMBEDDING_MODULES:
        logger.warning(
            "--resize-embeddings with --peft: new embedding rows stay as initialised unless --lora-modules-to-save "
            "names embed_tokens and lm_head"
        )
    if model is not None:
        return load_model_and_processor(model, tokenizer, kwargs, chat_template=template, resize_embeddings=resize)
    name = model_args.model_name_or_path
    if not name:
        raise UsageError("no model: pass --model (a hub id or a local directory)")
    base = start_adapter_base(model_args)
    check_model_source(base or name)
    if model_args.model_revision is not None and Path(name).expanduser().exists():
        # a local folder has no branches or commits: the revision would be dropped without a word
        logger.warning(
            "--model-revision %s has no effect: --model %s is a local folder", model_args.model_revision, name
        )
    own_tokenizer = base is None or (Path(name).expanduser() / "tokenizer_config.json").is_file()
    model, tokenizer = load_model_and_processor(
        base or name,
        tokenizer,
        kwargs,
        chat_template=template,
        tokenizer_from=name if own_tokenizer else base,
        resize_embeddings=resize,
    )
    apply_router_options(model, config.output_router_logits, config.router_aux_loss_coef)  # a model loaded here
    if base is not None:
        model = attach_start_adapter(model, name, merge=model_args.merge_start_adapter)
        how = "merged into its base" if model_args.merge_start_adapter else "trained on"
        logger.info("start adapter %s on base %s: %s", name, base, how)
    return model, tokenizer


#: module names of input/output embeddings that LoRA's modules_to_save trains in full
_EMBEDDING_MODULES = {"embed_tokens", "lm_head", "wte", "embed_in", "embed_out", "shared", "word_embeddings"}


def copy_config(config: ORPOConfig, **changes: Any) -> ORPOConfig:
    """A copy of ``config`` with ``changes``, sharing no mutable value with it.

    Built like ``dataclasses.replace`` (so ``__post_init__`` runs again and validates the changes; on an
    already initialised config it only re-derives what it derived before), with every value deep-copied:
    ``replace`` would hand the same ``fsdp_config`` / ``report_to`` objects to both configs.

    Args:
        config: the config to copy; left as it is.
        **changes: field values to set on the copy.
    """
    values = {f.name: copy.deepcopy(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}
    values.update(changes)
    return type(config)(**values)


def run_config(config: ORPOConfig, *, pairs: int | None, has_eval: bool, auto_logging: bool) -> ORPOConfig:
    """The config the trainer gets: a copy of the caller's, with what only the run knows.

    Args:
        config: the caller's config; left as it is.
        pairs: the training pairs; None when streamed, then automatic logging goes by ``max_steps`` alone.
        has_eval: whether there is evaluation data; without it evaluation is turned off (with a warning).
        auto_logging: set ``logging_steps`` from the run's length (:func:`~orpo.training.inputs.auto_logging_steps`).
    """

    changes: dict[str, Any] = {}
    if auto_logging and (pairs is not None or config.max_steps > 0):
        changes["logging_steps"] = auto_logging_steps(pairs, config)
    changes.update(launch_changes(config, _has_accelerator()))
    if config.dataloader_pin_memory and not _has_accelerator():
        changes["dataloader_pin_memory"] = False  # avoids torch's warning on CPU-only machines
    if not has_eval and config.eval_strategy != "no":
        logger.warning(
            "eval_strategy=%s but no evaluation data: evaluation is off (pass --valid-split)",
            getattr(config.eval_strategy, "value", config.eval_strategy),
        )
        changes.update(eval_strategy="no", load_best_model_at_end=False, do_eval=False)
    return copy_config(config, **changes)


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def finish_training(
    trainer: ORPOTrainer,
    *,
    model_args: ModelArguments | None = None,
    console: bool = True,
    resume_from_checkpoint: Any = None,
    train: bool = True,
) -> TrainResult:
    """Train (unless ``train=False``), save the model (and merged model), write curves, summary and health report.

    The output dir is locked for the run (:mod:`orpo.training.runlock`): a second run on it is refused.
    Every process calls it (the final save of a sharded model is a collective); the files are written by the
    main process.

    Args:
        trainer: a trainer from :func:`build_trainer`.
        model_args: how to save a LoRA model (merged or as an adapter), as in :func:`build_trainer`; None: the
            defaults.
        console: print the summary table at the end.
        resume_from_checkpoint: a checkpoint to resume from, as ``ORPOTrainer.train`` takes it; falsy: start afresh.
        train: False only saves and reports (and evaluates, with evaluation data) the model as it is.

    Raises:
        UsageError: another run holds the output dir.
    """

    with holding(str(trainer.args.output_dir), trainer.is_world_process_zero(), _from_main(trainer)):
        return _finish(trainer, model_args, console, resume_from_checkpoint, train)


def _from_main(trainer: ORPOTrainer) -> Callable[[Any], Any] | None:
    """Every process gets the main process's value (None for one process: nothing to share)."""
    if trainer.args.world_size <= 1:
        return None

    def share(value: Any) -> Any:
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    return share


def _finish(
    trainer: ORPOTrainer,
    model_args: ModelArguments | None,
    console: bool,
    resume_from_checkpoint: Any,
    train: bool,
) -> TrainResult:
    from orpo.training.health import HealthCallback
    from orpo.training.summary import plot_training_curves, summary_table, write_summary

    config = trainer.args
    model_args = model_args or ModelArguments()
    train_metrics: dict[str, float] = {}
    steps: dict[str, Any] = {}
    if train:
        output = trainer.train(resume_from_checkpoint=resume_from_checkpoint if resume_from_checkpoint else None)
        train_metrics = dict(output.metrics)
        first = trainer.reliability.first_step
        steps = {
            "steps_run": trainer.state.global_step - first,
            "first_step": first,
            "resumed_from": trainer.reliability.resume,
            "pairs_per_step": config.per_device_train_batch_size
            * config.world_size
            * config.gradient_accumulation_steps,
        }
    eval_metrics: dict[str, float] = {}
    if trainer.eval_dataset is not None:
        last = next((log for log in reversed(trainer.state.log_history) if "eval_loss" in log), None)
        if last is not None and last.get("step") == trainer.state.global_step and not config.load_best_model_at_end:
            eval_metrics = {key: value for key, value in last.items() if key.startswith("eval_")}
        else:
            eval_metrics = trainer.evaluate()
    out = Path(str(config.output_dir))  # build_trainer refuses a config without one
    out.mkdir(parents=True, exist_ok=True)
    result = TrainResult(output_dir=str(out), train_metrics=train_metrics, eval_metrics=eval_metrics, **steps)
    # Every process: gathering a sharded model is a collective (only the saving processes write).
    result.adapter_dir, result.merged = save_final(trainer, model_args, str(out))
    trainer.save_state()
    result.log_history = list(trainer.state.log_history)
    health = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, HealthCallback)), None)
    if health is not None:
        result.health = health.final_report(result.log_history, trainer.state)
    if trainer.is_world_process_zero():
        write_model_card(trainer, str(out))  # again, now with the health verdict
        result.plot_path = plot_training_curves(result.log_history, out / "training_curves.png")
        result.summary_path = write_summary(out / "training_summary.json", result)
        if console:
            print(summary_table(result), flush=True)
    return result


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments | None,
    config: ORPOConfig,
    *,
    console: bool = True,
    auto_logging: bool = False,
    **kwargs: Any,
) -> TrainResult:
    """Build the trainer, train, save, plot, summarise: the whole run.  A checkpoint to resume is found and
    checked (:func:`check_resume`) before anything is loaded.

    The steps: :func:`check_resume` (with ``config.resume_from_checkpoint``), :func:`build_trainer` (settings
    checked, data and model loaded, the trainer built with :func:`run_config`'s copy of ``config``), then
    :func:`finish_training`: the output dir locked, training, the final evaluation (with evaluation data), the
    model saved (a LoRA model merged or as an adapter, as ``model_args`` says), the trainer state, the model
    card, ``training_curves.png`` and ``training_summary.json`` written into ``output_dir``.

    Args:
        model_args: the model to load and how (revision, quantization, LoRA, a start adapter, merging at the end).
        data_args: the data to load (files, hub ids or a mixture, splits, columns); None with ``train_dataset``.
        config: the training settings; copied, never changed (``output_dir`` is required).
        console: a progress bar or progress lines, health warnings and the summary table on the console.
        auto_logging: set ``logging_steps`` from the data size (about 20 logs per run).
        **kwargs: passed to :func:`build_trainer`: ``model``, ``tokenizer``, ``train_dataset``,
            ``eval_dataset``, ``callbacks``, ``resume_command``.

    Returns:
        The paths and metrics of the run (on processes other than the main one, without ``plot_path`` and
            ``summary_path``).

    Raises:
        UsageError: settings that cannot train (see :func:`build_trainer`), or another run on the output dir.
        ValueError: a checkpoint to resume that is missing, does not verify or does not fit the model.
    """
    resume = check_resume(model_args, config)
    trainer = build_trainer(model_args, data_args, config, console=console, auto_logging=auto_logging, **kwargs)
    return finish_training(trainer, model_args=model_args, console=console, resume_from_checkpoint=resume)
