"""``ORPOTrainer``: a ``transformers.Trainer`` that optimises the ORPO objective."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments

from .config import ORPOConfig
from .data import prepare_preference_dataset
from .data.collate import choose_collator
from .eval_generation import generate_samples
from .loss import orpo_loss, pair_counts, pair_logps
from .metrics import METRIC_NAMES as METRIC_NAMES  # re-exported: `from orpo.trainer import METRIC_NAMES`
from .metrics import MetricWindows
from .modeling import (
    apply_peft,
    disable_dropout,
    is_peft_model,
    load_model,
    load_tokenizer,
    model_kind,
    prepare_tokenizer,
)
from .reliability import ReliabilityMixin
from .scoring import TokenScorer, unwrap

logger = logging.getLogger(__name__)


def _to_orpo_config(args: TrainingArguments | None, model: Any) -> ORPOConfig:
    if isinstance(args, ORPOConfig):
        return args
    if args is None:
        name = model if isinstance(model, str) else type(model).__name__ if model is not None else "model"
        return ORPOConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1]}-ORPO")
    names = {f.name for f in dataclasses.fields(ORPOConfig) if f.init}
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init and f.name in names}
    return ORPOConfig(**values)


class ORPOTrainer(ReliabilityMixin, Trainer):
    """Trainer for ORPO with TRL's constructor signature.

    One forward pass per step over chosen and rejected rows; the loss is
    ``NLL(chosen) + beta * mean(-logsigmoid(log_odds))`` (see :mod:`orpo.loss`), normalised over
    the whole gradient-accumulation window so micro-batching does not change the update.
    """

    _tag_names: ClassVar[list[str]] = ["orpo"]
    args: ORPOConfig  # always: __init__ turns any TrainingArguments into an ORPOConfig

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
        args = _to_orpo_config(args, model)
        if tokenizer is not None:
            if processing_class is not None and processing_class is not tokenizer:
                raise ValueError("pass either processing_class or tokenizer, not both")
            processing_class = tokenizer
        if isinstance(model, str):
            if processing_class is None:
                processing_class = load_tokenizer(model)
            model = load_model(model, args.model_init_kwargs)
        elif args.model_init_kwargs:
            warnings.warn("model_init_kwargs is ignored because the model is already instantiated", stacklevel=2)
        if processing_class is None:
            raise ValueError("ORPOTrainer needs processing_class (the tokenizer) to tokenize and pad the data")
        tokenizer_ = getattr(processing_class, "tokenizer", processing_class)
        prepare_tokenizer(tokenizer_)

        if model is not None:
            model = self._prepare_model(model, args, peft_config)
        elif model_init is not None and (peft_config is not None or args.freeze_vision_tower):
            user_init = model_init

            def model_init() -> torch.nn.Module:  # wraps the user's initializer
                return self._prepare_model(user_init(), args, peft_config)

        # "causal", "vision" (orpo.vision) or "seq2seq" (orpo.seq2seq): picks data preparation and collator.
        self.model_kind = model_kind(
            unwrap(model) if model is not None else None, processing_class, args.is_encoder_decoder
        )
        args.is_encoder_decoder = self.model_kind == "seq2seq"
        # What preparation tokenizes with: the processor itself for images, else its tokenizer.
        self.data_processor = processing_class if self.model_kind == "vision" else tokenizer_
        data_processor = self.data_processor

        self.data_reports: dict[str, Any] = {}
        if train_dataset is not None:
            train_dataset, self.data_reports["train"] = self._prepare_data(train_dataset, data_processor, args, "train")
        if eval_dataset is not None:
            if isinstance(eval_dataset, dict):
                eval_dataset = {
                    name: self._prepare_eval(data, data_processor, args, f"eval[{name}]")
                    for name, data in eval_dataset.items()
                }
            else:
                eval_dataset = self._prepare_eval(eval_dataset, data_processor, args, "eval")

        if data_collator is None:
            data_collator = choose_collator(
                self.model_kind, args, processing_class, tokenizer_, unwrap(model) if model is not None else None
            )
        if args.gradient_checkpointing and args.gradient_checkpointing_kwargs is None:
            args.gradient_checkpointing_kwargs = {"use_reentrant": False}

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
        # compute_loss already normalises by the whole accumulation window.
        self.loss_is_scaled_for_ga = True
        sharded = bool(getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False))
        self.scorer = TokenScorer(args.fused_lm_head, args.label_pad_token_id, allow_fused=not sharded)
        self.metric_windows = MetricWindows()
        self._window: torch.Tensor | None = None
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    # ---- setup ------------------------------------------------------------------------
    @staticmethod
    def _prepare_model(model: torch.nn.Module, args: ORPOConfig, peft_config: Any) -> torch.nn.Module:
        if peft_config is not None:
            if is_peft_model(model):
                raise ValueError("the model already has a PEFT adapter; pass peft_config=None to train it as is")
            model = apply_peft(model, peft_config, gradient_checkpointing=args.gradient_checkpointing)
        if args.disable_dropout:
            disable_dropout(model)
        if args.freeze_vision_tower:
            from .vision import freeze_vision_tower

            freeze_vision_tower(model)
        return model

    def _prepare_data(self, data: Any, processor: Any, args: ORPOConfig, split: str) -> tuple[Any, Any]:
        """Preference data -> tokenized pairs: the one pipeline, with this kind of model's row tokenizer."""
        if self.model_kind == "vision":
            from .vision import prepare_vision_dataset

            return prepare_vision_dataset(data, processor, args, split)
        if self.model_kind == "seq2seq":
            from .seq2seq import prepare_seq2seq_dataset

            return prepare_seq2seq_dataset(data, processor, args, split)
        return prepare_preference_dataset(data, processor, args, split)

    def _prepare_eval(self, data: Any, processor: Any, args: ORPOConfig, split: str) -> Any:
        return self._prepare_data(data, processor, args, split)[0]

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["prompt_input_ids", "chosen_input_ids", "rejected_input_ids", "length", "images"]

    # ---- loss -------------------------------------------------------------------------
    def _counts(self, batch: dict[str, Any]) -> torch.Tensor:
        """[NLL tokens, valid pairs] of one collated batch (float64, to sum across processes)."""
        counts = pair_counts(batch["labels"], batch.get("nll_labels"), self.args.label_pad_token_id)
        return torch.stack(counts).to(torch.float64)

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        """Also count NLL tokens and pairs of the whole accumulation window, across processes."""
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batch_samples:
            counts = torch.stack([self._counts(batch) for batch in batch_samples]).sum(0).to(device)
            if self.args.world_size > 1:
                counts = self.accelerator.reduce(counts, reduction="sum")
            self._window = counts
        return batch_samples, num_items

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        mode = "train" if model.training else "eval"
        scores = self.scorer(model, inputs)
        pairs = pair_logps(scores.logps, inputs["labels"], inputs.get("nll_labels"), self.args.label_pad_token_id)
        scale = 1.0
        if mode == "train" and self._window is not None:
            nll_tokens, pair_count = self._window[0], self._window[1]
            scale = float(self.args.world_size)  # DDP averages gradients over processes
        else:
            nll_tokens, pair_count = pairs.counts
        out = orpo_loss(pairs.chosen, pairs.rejected, self.args.beta, pairs.nll_logp_sum, nll_tokens, pair_count)
        if not bool(pairs.valid.all()):
            excluded = int((~pairs.valid).sum())
            logger.warning("%d pair(s) in this batch have an empty completion and are excluded", excluded)
        self.metric_windows.record(mode, out, pairs, scores)
        loss = out.loss * scale
        if return_outputs:
            return loss, {"chosen_rewards": out.odds.chosen_rewards, "rejected_rewards": out.odds.rejected_rewards}
        return loss

    def _pop_metrics(self, mode: str) -> dict[str, float]:
        def reduce(values: torch.Tensor) -> torch.Tensor:
            return self.accelerator.reduce(values, reduction="sum")

        return self.metric_windows.pop(mode, self.args.device, reduce if self.args.world_size > 1 else None)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # evaluate() names its metrics "<metric_key_prefix>_...": "eval_", "eval_<name>_" for a dict of eval
        # datasets, or any prefix the caller chose.
        eval_prefix = getattr(self, "_eval_prefix", None) or "eval"
        mode = "eval" if any(key.startswith(f"{eval_prefix}_") for key in logs) else "train"
        metrics = self._pop_metrics(mode)
        prefix = f"{eval_prefix}_" if mode == "eval" else ""
        logs.update({f"{prefix}{name}": value for name, value in metrics.items()})
        super().log(logs, start_time)

    # ---- evaluation ---------------------------------------------------------------------
    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """``Trainer.evaluate`` that also accepts raw preference data, logs the ORPO metrics under
        ``metric_key_prefix`` and, with ``generate_during_eval``, saves a few greedy generations."""
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            eval_dataset = self._tokenized_eval(eval_dataset)
        if isinstance(eval_dataset, dict) or (eval_dataset is None and isinstance(self.eval_dataset, dict)):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)  # calls back here per dataset
        previous = getattr(self, "_eval_prefix", None)
        self._eval_prefix = metric_key_prefix
        self.metric_windows.reset("eval")  # nothing left over from predict() or an aborted run
        try:
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._eval_prefix = previous
        if self.args.generate_during_eval:
            dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
            if isinstance(dataset, str):
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
        JSONL to ``output_dir/generations/step-<global step><suffix>.jsonl``; returns the path (main process)."""
        return generate_samples(self, dataset, num_samples, suffix)

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, extra = self.compute_loss(model, inputs, return_outputs=True)
        loss = loss.detach()
        if prediction_loss_only:
            return loss, None, None
        logits = torch.stack([extra["chosen_rewards"], extra["rejected_rewards"]], dim=1)
        labels = torch.zeros(logits.shape[0], device=logits.device)
        return loss, logits, labels
