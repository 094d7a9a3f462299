"""``ORPOTrainer``: a ``transformers.Trainer`` that optimises the ORPO objective."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import datasets
import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments

from orpo.config.orpo_config import ORPOConfig, resolve_config
from orpo.internals import private, releases
from orpo.loss import orpo_loss, pair_counts, pair_logps
from orpo.models.kinds import CAUSAL, ModelKind, kind_of
from orpo.models.loading import (
    absolute_base_path,
    is_peft_model,
    load_model_and_processor,
    prepare_model,
    prepare_tokenizer,
)
from orpo.scoring.collate import Collator
from orpo.scoring.layouts import Layout
from orpo.scoring.model_view import unwrap
from orpo.scoring.moe import RouterLoss, apply_router_options
from orpo.scoring.routing import LayoutChoice, choose_layout
from orpo.scoring.scorer import TokenScorer
from orpo.training.card import write_model_card
from orpo.training.distributed import check_launch
from orpo.training.eval_samples import generate_samples
from orpo.training.metrics import MetricWindows, window_loss
from orpo.training.reliability import preflight
from orpo.training.reliability.checkpoint import remove_stale_staging
from orpo.training.reliability.wiring import Reliability


class ORPOTrainer(Trainer):
    """Trainer for ORPO with TRL's constructor signature.

    One forward pass per step over chosen and rejected rows; the loss is
    ``NLL(chosen) + beta * mean(-logsigmoid(log_odds))`` (see :mod:`orpo.loss`), normalised over
    the whole gradient-accumulation window so micro-batching does not change the update.
    Checkpoints, resume, signals and the non-finite guard are objects it owns (:mod:`orpo.training.reliability`).

    Args:
        model: a model, a hub id or local folder to load one from, or None with ``model_init``.
        args: an ``ORPOConfig`` (or ``TrainingArguments``, converted); the trainer keeps its own copy.
            None: the defaults, with ``output_dir`` ``<model name>-ORPO``.
        data_collator: None: the model kind's collator for the layout chosen (:mod:`orpo.scoring.routing`);
            a collator of your own is used as given (no layout is chosen).
        train_dataset: preference data (Dataset, list of dicts, dict of lists, DataFrame; text models also a
            streamed ``IterableDataset``, with ``max_steps``), prepared by :mod:`orpo.data`; tokenized pairs pass
            through.
        eval_dataset: preference data prepared the same way, or a dict of them (named evaluations).
        processing_class: the tokenizer (a processor for vision-language models); None: loaded with the model.
        model_init: makes a fresh model for each ``train()`` (hyperparameter search); needs ``processing_class``.
        callbacks: extra ``TrainerCallback`` s, as in ``Trainer``.
        optimizers: ``(optimizer, scheduler)``, as in ``Trainer``; the optimizer is gated by the non-finite guard.
        preprocess_logits_for_metrics: as in ``Trainer``; it receives :meth:`prediction_step`'s rewards.
        peft_config: a PEFT config: train a LoRA adapter of it (also applied to ``model_init``'s models).
        compute_metrics: as in ``Trainer``; its predictions are the chosen and rejected rewards, ``[B, 2]``.
        tokenizer: TRL's older name of ``processing_class`` (pass one of them).

    Raises:
        ValueError: both ``processing_class`` and ``tokenizer`` are given, ``model_init`` comes without a
            processing class, settings would train nothing, ``output_dir`` is not writable, streamed data has
            no ``max_steps``, or ``output_router_logits`` is on for a model without routed experts.
    """

    args: ORPOConfig  # always a resolved copy (resolve_config), never the caller's object
    _tag_names: ClassVar[list[str]] = ["orpo"]
    #: Set to False before ``train()`` to leave SIGINT/SIGTERM to their usual handlers.
    handle_signals: bool = True
    #: The command line that resumes this run (``orpo train`` sets it); None: messages give the Python call.
    resume_command: str | None = None
    #: Where the training data came from (a path or hub id), for the model card; ``orpo train`` sets it.
    train_source: str | None = None
    #: The batch layout chosen for the model, logged once (None with the caller's own data collator).
    layout_choice: LayoutChoice | None = None
    #: What kind of model this trains (:mod:`orpo.models.kinds`): its data path, collators and layouts.
    model_kind: ModelKind = CAUSAL

    def __init__(
        self,
        model: PreTrainedModel | torch.nn.Module | str | None = None,
        args: ORPOConfig | TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        model_init: Callable[[], PreTrainedModel] | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        preprocess_logits_for_metrics: Callable | None = None,
        peft_config: Any = None,
        compute_metrics: Callable | None = None,
        tokenizer: Any = None,
    ) -> None:
        args = resolve_config(args, model)
        model, processing_class, model_init = self._model_and_processor(
            model, args, processing_class, tokenizer, peft_config, model_init
        )
        tokenizer_ = getattr(processing_class, "tokenizer", processing_class)
        self._set_model_kind(model, processing_class, args)
        self.data_reports: dict[str, Any] = {}
        train_dataset, eval_dataset = self._prepare_datasets(train_dataset, eval_dataset, args)

        chooses_layout = data_collator is None  # padded until the model is known (model_init's too), below
        if chooses_layout:
            data_collator = self.model_kind.collator(
                args, processing_class, tokenizer_, unwrap(model) if model is not None else None
            )
        if args.should_save and args.output_dir is not None:  # Trainer creates output_dir right away
            remove_stale_staging(args.output_dir)  # before the check: a partial save may be what fills the disk
            preflight.check_output_dir(args.output_dir)
        train_dataset = preflight.with_row_index(train_dataset, data_collator)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        if chooses_layout:
            self.layout_choice, self.data_collator = self._layout_and_collator(args, processing_class, tokenizer_)
        self.router_loss = RouterLoss(args.output_router_logits, args.router_aux_loss_coef)
        if self.model is not None:
            self.router_loss.resolve(self.model)  # output_router_logits on a dense model: refused before training
        releases.loss_is_scaled_for_ga(self)  # compute_loss already normalises by the whole accumulation window
        releases.restore_indexed_cpu_locations()
        sharded = bool(getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False))
        self.scorer = TokenScorer(args.fused_lm_head, args.label_pad_token_id, allow_fused=not sharded)
        self.metric_windows = MetricWindows()
        self._window: torch.Tensor | None = None
        self._window_batches = 1  # micro-batches of the accumulation window (the load-balancing term's mean)
        add_model_tags = getattr(self.model, "add_model_tags", None)  # PreTrainedModel's; PEFT forwards it
        if callable(add_model_tags):
            add_model_tags(self._tag_names)
        self._eval_prefix: str | None = None
        check_launch(self)
        self.reliability = Reliability(self)

    # ---- reliability: Trainer's loop reaches orpo.training.reliability through these ---------------------
    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Checks first, resumes only from a verified checkpoint, stops cleanly on SIGINT/SIGTERM.

        Args:
            resume_from_checkpoint: a checkpoint folder, or True (also "true"/"latest") for the newest one in
                ``output_dir`` that verifies; None or False: start afresh.
            trial: as in ``Trainer.train`` (hyperparameter search).
            ignore_keys_for_eval: as in ``Trainer.train``.
            **kwargs: passed to ``Trainer.train``.

        Raises:
            TrainingInterrupted: SIGINT/SIGTERM stopped the run (after saving a checkpoint).
            NonFiniteError: a non-finite loss or gradient under ``on_nonfinite="error"``.
            CheckpointError: a checkpoint could not be saved.
            ValueError: nothing to resume from, a checkpoint that does not fit the run, or settings that
                would train nothing.
        """
        resume = self.reliability.before_train(resume_from_checkpoint)
        with self.reliability.signals.installed(self.handle_signals), self.reliability.load_errors_named():
            output = super().train(resume, trial, ignore_keys_for_eval, **kwargs)
        self.reliability.after_train()
        return output

    def call_model_init(self, trial: Any = None) -> Any:
        """Trainer's, with the chosen layout's attention: each run of model_init makes a new model.

        Args:
            trial: the hyperparameter-search trial, passed to ``model_init``.
        """
        model = super().call_model_init(trial)
        return self.layout_choice.apply(model) if self.layout_choice is not None else model

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer, behind the gate the non-finite guard closes to hold an update back.

        Args:
            model: the model to optimize (transformers releases that take it); None: ``self.model``.
        """
        created = (
            super().create_optimizer(model) if releases.CREATE_OPTIMIZER_TAKES_MODEL else super().create_optimizer()
        )
        self.optimizer = self.reliability.gate(created)
        return self.optimizer

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """Trainer's step; the micro-batch's loss (at a window's end, its gradients) goes to the non-finite guard."""
        self.reliability.guard.begin_micro_batch()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.reliability.end_micro_batch(loss, inputs, model)
        return loss

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """Where Trainer saves (``internals.OVERRIDDEN``): the same files, committed atomically."""
        self.reliability.save_checkpoint(trial)

    # ---- saving: every saved model carries its card, every adapter an absolute base path ------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's ``save_model`` plus the card; a failed save of the final model is a :class:`CheckpointError`
        naming the folder, the cause and the last complete checkpoint (inside a checkpoint the commit reports it).

        Args:
            output_dir: where to save; None: ``args.output_dir``.
            _internal_call: Trainer's flag for saves inside its loop (checkpoints).

        Raises:
            CheckpointError: the final model could not be written.
        """
        if is_peft_model(self.model):
            absolute_base_path(self.model)
        target = output_dir or str(self.args.output_dir)
        try:
            super().save_model(output_dir, _internal_call)
            if self.args.should_save:
                write_model_card(self, target)
        except (OSError, RuntimeError) as err:
            if _internal_call:  # inside a checkpoint: the commit names it
                raise
            raise self.reliability.save_error(f"the model to {target}", target, err) from err

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """orpo's card in ``output_dir`` (what ``push_to_hub`` uploads), with the caller's extra tags.

        Only ``model_name`` and ``tags`` are used; the other arguments are ``Trainer``'s, accepted and ignored
        (the card describes the model, data and run itself).

        Args:
            language: ignored.
            license: ignored.
            tags: extra tags, one or a list.
            model_name: the model's name on the card.
            finetuned_from: ignored.
            tasks: ignored.
            dataset_tags: ignored.
            dataset: ignored.
            dataset_args: ignored.
        """
        if self.is_world_process_zero():
            extra = [tags] if isinstance(tags, str) else list(tags or [])
            write_model_card(self, str(self.args.output_dir), model_name=model_name, tags=extra)

    # ---- setup ------------------------------------------------------------------------
    def _model_and_processor(
        self,
        model: PreTrainedModel | torch.nn.Module | str | None,
        args: ORPOConfig,
        processing_class: Any,
        tokenizer: Any,
        peft_config: Any,
        model_init: Callable[[], PreTrainedModel] | None,
    ) -> tuple[torch.nn.Module | None, Any, Callable[[], PreTrainedModel] | None]:
        """TRL's model/tokenizer arguments -> the prepared model (or initializer) and its processing class."""
        if tokenizer is not None:
            if processing_class is not None and processing_class is not tokenizer:
                raise ValueError("pass either processing_class or tokenizer, not both")
            processing_class = tokenizer
        init_kwargs = args.model_init_kwargs
        assert not isinstance(init_kwargs, str), "ORPOConfig.__post_init__ parses it"
        if not isinstance(model, str) and init_kwargs:
            warnings.warn("model_init_kwargs is ignored because the model is already instantiated", stacklevel=3)
        if model is not None:
            named = isinstance(model, str)
            model, processing_class = load_model_and_processor(
                model, processing_class, init_kwargs, trust_remote_code=args.trust_remote_code
            )
            if named:  # loaded here: its config may say how it trains (a caller's model object stays as given)
                apply_router_options(model, args.output_router_logits, args.router_aux_loss_coef)
            return prepare_model(model, args, peft_config), processing_class, model_init
        if processing_class is None:
            raise ValueError("ORPOTrainer needs processing_class (the tokenizer) to tokenize and pad the data")
        prepare_tokenizer(getattr(processing_class, "tokenizer", processing_class))
        if model_init is not None and (peft_config is not None or args.freeze_vision_tower):
            user_init = model_init

            def prepared_init() -> torch.nn.Module:  # wraps the user's initializer
                return prepare_model(user_init(), args, peft_config)

            model_init = prepared_init  # type: ignore[assignment]  # Trainer only calls it
        return None, processing_class, model_init

    def _set_model_kind(self, model: torch.nn.Module | None, processing_class: Any, args: ORPOConfig) -> None:
        """The model's kind picks data preparation, collator and layouts; ``data_processor`` is what
        preparation tokenizes with (the processor itself for images)."""
        self.model_kind = kind_of(
            unwrap(model) if model is not None else None, processing_class, args.is_encoder_decoder
        )
        args.is_encoder_decoder = self.model_kind.is_encoder_decoder
        self.data_processor = self.model_kind.data_processor(processing_class)

    def _layout_and_collator(self, args: ORPOConfig, processor: Any, tokenizer: Any) -> tuple[LayoutChoice, Collator]:
        """The layout (:func:`orpo.scoring.routing.choose_layout`), the model switched to the attention
        that runs it, and the collator of that layout (the padded one already built, if padded)."""
        assert self.model is not None, "Trainer.__init__ resolves model or model_init to a model"
        padded_only = self.model_kind.padded_only
        if isinstance(self.train_dataset, datasets.IterableDataset | torch.utils.data.IterableDataset):
            padded_only = padded_only or "streamed training data: accelerate splits its batches by rows"
        elif args.n_gpu > 1:
            padded_only = (
                padded_only or f"{args.n_gpu} GPUs in one process: torch.nn.DataParallel splits batches by rows"
            )
        choice = choose_layout(args.requested_layout(), self.model, padded_only)
        choice.log()
        choice.apply(self.model)
        if choice.layout is Layout.PADDED:
            return choice, self.data_collator
        return choice, self.model_kind.collator(args, processor, tokenizer, unwrap(self.model), choice.layout)

    def _prepare_datasets(self, train_dataset: Any, eval_dataset: Any, args: ORPOConfig) -> tuple[Any, Any]:
        """Tokenized train and eval data (and their reports in ``self.data_reports``)."""
        data_processor = self.data_processor
        if train_dataset is not None:
            preflight.check_training_amounts(args)  # before the data is prepared
        # Each node's main process prepares first; the others then read its datasets cache (file-backed data).
        with args.main_process_first(desc="preparing the data"):
            if train_dataset is not None:
                train_dataset, self.data_reports["train"] = self._prepare_data(
                    train_dataset, data_processor, args, "train"
                )
            if eval_dataset is not None:
                if isinstance(eval_dataset, dict):
                    eval_dataset = {
                        name: self._prepare_eval(data, data_processor, args, f"eval[{name}]")
                        for name, data in eval_dataset.items()
                    }
                else:
                    eval_dataset = self._prepare_eval(eval_dataset, data_processor, args, "eval")
        return train_dataset, eval_dataset

    def _prepare_data(self, data: Any, processor: Any, args: ORPOConfig, split: str) -> tuple[Any, Any]:
        """Preference data -> tokenized pairs: the one pipeline, with this kind of model's row tokenizer."""
        if split == "train" and isinstance(data, datasets.IterableDataset) and args.max_steps <= 0:
            raise ValueError("streamed training data has no length: set max_steps (ORPOConfig.max_steps, --max-steps)")
        return self.model_kind.prepare(data, processor, args, split)

    def _prepare_eval(self, data: Any, processor: Any, args: ORPOConfig, split: str) -> Any:
        return self._prepare_data(data, processor, args, split)[0]

    # ---- loss -------------------------------------------------------------------------
    def _counts(self, batch: dict[str, Any]) -> torch.Tensor:
        """[NLL tokens, valid pairs] of one collated batch (float64, to sum across processes)."""
        counts = pair_counts(batch["labels"], batch.get("nll_labels"), self.args.label_pad_token_id)
        return torch.stack(counts).to(torch.float64)

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        """Also count NLL tokens and pairs of the whole accumulation window, across processes.

        Args:
            epoch_iterator: the epoch's data iterator.
            num_batches: the micro-batches of the window.
            device: where the counts go (summed across processes there).
        """
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batch_samples:
            counts = torch.stack([self._counts(batch) for batch in batch_samples]).sum(0).to(device)
            if self.args.world_size > 1:
                counts = self.accelerator.reduce(counts, reduction="sum")
            self._window = counts
            self._window_batches = len(batch_samples)
        return batch_samples, num_items

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """The ORPO loss of a micro-batch, normalised in training by the whole window's NLL tokens and pairs."""
        mode = "train" if model.training else "eval"
        scores, aux_loss = self.router_loss.score(self.scorer, model, inputs)
        pairs = pair_logps(scores.logps, inputs["labels"], inputs.get("nll_labels"), self.args.label_pad_token_id)
        scale = 1.0
        if mode == "train" and self._window is not None:
            nll_tokens, pair_count = self._window[0], self._window[1]
            scale = float(self.args.world_size)  # DDP averages gradients over processes
        else:
            nll_tokens, pair_count = pairs.counts
        out = orpo_loss(pairs.chosen, pairs.rejected, self.args.beta, pairs.nll_logp_sum, nll_tokens, pair_count)
        self.metric_windows.record(mode, out, pairs, scores, aux_loss)
        loss = out.loss * scale
        if aux_loss is not None:
            # TRL's coef * aux_loss per micro-batch, averaged over the window as Trainer averages TRL's losses
            # (not scaled by world_size: DDP's mean over processes is the mean TRL gets)
            batches = self._window_batches if mode == "train" and self._window is not None else 1
            loss = loss + self.router_loss.resolve(model)[1] / batches * aux_loss.to(loss.device)
        if return_outputs:
            return loss, {"chosen_rewards": out.odds.chosen_rewards, "rejected_rewards": out.odds.rejected_rewards}
        return loss

    def _pop_metrics(self, mode: str) -> dict[str, float]:
        def reduce(values: torch.Tensor) -> torch.Tensor:
            return self.accelerator.reduce(values, reduction="sum")

        return self.metric_windows.pop(mode, self.args.device, reduce if self.args.world_size > 1 else None)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's log plus the window's ORPO metrics, with ``loss`` recomputed from the window's sums."""
        # evaluate() names its metrics "<metric_key_prefix>_...": "eval_", "eval_<name>_" for a dict of eval
        # datasets, or any prefix the caller chose.
        eval_prefix = self._eval_prefix or "eval"
        mode = "eval" if any(key.startswith(f"{eval_prefix}_") for key in logs) else "train"
        metrics = self._pop_metrics(mode)
        prefix = f"{eval_prefix}_" if mode == "eval" else ""
        if metrics and f"{prefix}loss" in logs:  # Trainer's loss averages steps, not the window's tokens and pairs
            logs[f"{prefix}loss"] = window_loss(metrics, self.args.beta, self._aux_coef())
        logs.update({f"{prefix}{name}": value for name, value in metrics.items()})
        logs.update(self.reliability.guard.log_fields(logs))
        super().log(logs, start_time)

    def _aux_coef(self) -> float:
        """The load-balancing loss's coefficient in the logged loss (0 without a model or the term)."""
        if self.model is None:
            return 0.0
        enabled, coef = self.router_loss.resolve(self.model)
        return coef if enabled else 0.0

    # ---- evaluation ---------------------------------------------------------------------
    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """``Trainer.evaluate`` that also accepts raw preference data, logs the ORPO metrics under
        ``metric_key_prefix`` and, with ``generate_during_eval``, saves a few greedy generations.

        Args:
            eval_dataset: preference data (prepared like ``eval_dataset``), tokenized pairs, a dict of them, or
                the name of one of ``self.eval_dataset``'s; None: ``self.eval_dataset``.
            ignore_keys: as in ``Trainer.evaluate``.
            metric_key_prefix: the prefix of the logged metrics (``eval_rewards/accuracies``...).
        """
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            eval_dataset = self._tokenized_eval(eval_dataset)
        if isinstance(eval_dataset, dict) or (eval_dataset is None and isinstance(self.eval_dataset, dict)):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)  # calls back here per dataset
        previous = self._eval_prefix
        self._eval_prefix = metric_key_prefix
        self.metric_windows.reset("eval")  # nothing left over from predict() or an aborted run
        try:
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._eval_prefix = previous
        if self.args.generate_during_eval:
            dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
            if isinstance(dataset, str) and isinstance(self.eval_dataset, dict):
                dataset = self.eval_dataset[dataset]
            suffix = "" if metric_key_prefix == "eval" else f"-{metric_key_prefix.removeprefix('eval_')}"
            self.generate_samples(dataset, suffix=suffix)
        return metrics

    def _tokenized_eval(self, data: Any) -> Any:
        """Eval data handed to ``evaluate()`` is prepared like ``eval_dataset`` (tokenized data passes through)."""
        if isinstance(data, dict):  # as in Trainer.evaluate: named eval datasets
            return {name: self._tokenized_eval(value) for name, value in data.items()}
        return self._prepare_eval(data, self.data_processor, self.args, "eval")

    def generate_samples(self, dataset: Any, num_samples: int = 4, suffix: str = "") -> str | None:
        """Greedy generations for the first ``num_samples`` prompts of a tokenized eval dataset, written as
        JSONL to ``output_dir/generations/step-<global step><suffix>.jsonl``; returns the path (main process).

        Args:
            dataset: tokenized eval pairs.
            num_samples: how many prompts to generate for.
            suffix: appended to the file name (a named eval dataset's).
        """
        return generate_samples(self, dataset, num_samples, suffix)

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The eval loss; as logits the chosen and rejected rewards ``[B, 2]``, as labels zeros (chosen is index 0)."""
        inputs = private.prepare_inputs(self, inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, extra = self.compute_loss(model, inputs, return_outputs=True)
        loss = loss.detach()
        if prediction_loss_only:
            return loss, None, None
        logits = torch.stack([extra["chosen_rewards"], extra["rejected_rewards"]], dim=1)
        labels = torch.zeros(logits.shape[0], device=logits.device)
        return loss, logits, labels
