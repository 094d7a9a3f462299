"""``ORPOTrainer``: a ``transformers.Trainer`` that optimises the ORPO objective."""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments

from .config import ORPOConfig
from .data import ORPODataCollator, prepare_preference_dataset
from .forward import TokenScorer, unwrap
from .loss import SequenceLogps, orpo_loss
from .modeling import apply_peft, disable_dropout, is_peft_model, load_model, load_tokenizer, prepare_tokenizer

logger = logging.getLogger(__name__)

#: The metrics logged at every logging step (``eval_``-prefixed during evaluation).
METRIC_NAMES = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "nll_loss",
    "log_odds_ratio",
    "log_odds_chosen",
)


def _to_orpo_config(args: TrainingArguments | None, model: Any) -> ORPOConfig:
    if isinstance(args, ORPOConfig):
        return args
    if args is None:
        name = model if isinstance(model, str) else type(model).__name__ if model is not None else "model"
        return ORPOConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1]}-ORPO")
    names = {f.name for f in dataclasses.fields(ORPOConfig) if f.init}
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init and f.name in names}
    return ORPOConfig(**values)


class ORPOTrainer(Trainer):
    """Trainer for ORPO with TRL's constructor signature.

    One forward pass per step over chosen and rejected rows; the loss is
    ``NLL(chosen) + beta * mean(-logsigmoid(log_odds))`` (see :mod:`orpo.loss`), normalised over
    the whole gradient-accumulation window so micro-batching does not change the update.
    """

    _tag_names = ["orpo"]

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
        elif model_init is not None and peft_config is not None:
            user_init = model_init

            def model_init() -> torch.nn.Module:  # noqa: F811 - wraps the user's initializer
                return self._prepare_model(user_init(), args, peft_config)

        probe_model = model if model is not None else None
        if args.is_encoder_decoder is None and probe_model is not None:
            args.is_encoder_decoder = bool(getattr(getattr(unwrap(probe_model), "config", None), "is_encoder_decoder", False))
        if args.is_encoder_decoder:
            raise ValueError("encoder-decoder models are not supported yet by orpo's ORPOTrainer")

        self.data_reports: dict[str, Any] = {}
        if train_dataset is not None:
            train_dataset, self.data_reports["train"] = prepare_preference_dataset(train_dataset, tokenizer_, args, "train")
        if eval_dataset is not None:
            if isinstance(eval_dataset, dict):
                eval_dataset = {
                    name: self._prepare_eval(data, tokenizer_, args, f"eval[{name}]") for name, data in eval_dataset.items()
                }
            else:
                eval_dataset = self._prepare_eval(eval_dataset, tokenizer_, args, "eval")

        if data_collator is None:
            pad = args.padding_value if args.padding_value is not None else tokenizer_.pad_token_id
            data_collator = ORPODataCollator(
                pad_token_id=pad,
                label_pad_token_id=args.label_pad_token_id,
                pad_to_multiple_of=args.pad_to_multiple_of,
                nll_scope=args.nll_scope,
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
        self._metric_sums: dict[str, dict[str, torch.Tensor]] = {"train": defaultdict(float), "eval": defaultdict(float)}
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
        return model

    @staticmethod
    def _prepare_eval(data: Any, tokenizer: Any, args: ORPOConfig, split: str) -> Any:
        dataset, report = prepare_preference_dataset(data, tokenizer, args, split)
        return dataset

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["prompt_input_ids", "chosen_input_ids", "rejected_input_ids", "length"]

    # ---- loss -------------------------------------------------------------------------
    def _counts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[NLL tokens, valid pairs] of one collated batch."""
        ignore = self.args.label_pad_token_id
        labels = batch["labels"][:, 1:]
        per_row = (labels != ignore).sum(-1)
        pairs = labels.shape[0] // 2
        valid = (per_row[:pairs] > 0) & (per_row[pairs:] > 0)
        nll_rows = batch["nll_labels"][:pairs, 1:] if "nll_labels" in batch else labels[:pairs]
        tokens = ((nll_rows != ignore).sum(-1) * valid).sum()
        return torch.stack([tokens, valid.sum()]).to(torch.float64)

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        """Also count NLL tokens and pairs of the whole accumulation window, across processes."""
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batch_samples:
            counts = sum(self._counts(batch) for batch in batch_samples).to(device)
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
        pairs = scores.mask.shape[0] // 2
        completion = inputs["labels"][:, 1:] != self.args.label_pad_token_id
        logps = scores.logps * completion
        per_seq = SequenceLogps(logps.sum(-1), completion.sum(-1), logps.sum(-1) / completion.sum(-1).clamp(min=1))
        chosen = SequenceLogps(*(t[:pairs] for t in per_seq))
        rejected = SequenceLogps(*(t[pairs:] for t in per_seq))
        valid = chosen.valid & rejected.valid
        if "nll_labels" in inputs:
            nll_mask = inputs["nll_labels"][:pairs, 1:] != self.args.label_pad_token_id
        else:
            nll_mask = completion[:pairs]
        nll_mask = nll_mask & valid[:, None]
        nll_logp_sum = (scores.logps[:pairs] * nll_mask).sum()

        scale = 1.0
        if mode == "train" and self._window is not None:
            nll_tokens, pair_count = self._window[0], self._window[1]
            scale = float(self.args.world_size)  # DDP averages gradients over processes
        else:
            nll_tokens, pair_count = nll_mask.sum(), valid.sum()
        out = orpo_loss(chosen, rejected, self.args.beta, nll_logp_sum, nll_tokens, pair_count)
        if not bool(valid.all()):
            logger.warning("%d pair(s) in this batch have an empty completion and are excluded", int((~valid).sum()))
        self._record(mode, out, scores, completion, nll_mask, nll_logp_sum, pairs)
        loss = out.loss * scale
        if return_outputs:
            return loss, {"chosen_rewards": out.odds.chosen_rewards, "rejected_rewards": out.odds.rejected_rewards}
        return loss

    def _record(self, mode: str, out: Any, scores: Any, completion: torch.Tensor, nll_mask: torch.Tensor,
                nll_logp_sum: torch.Tensor, pairs: int) -> None:
        """Accumulate sums so logged metrics are averages over the whole logging window."""
        odds = out.odds
        valid = odds.valid.float()
        with torch.no_grad():
            lm = scores.logit_means * completion
            sums = {
                "pairs": valid.sum(),
                "rewards/chosen": odds.chosen_rewards.sum(),
                "rewards/rejected": odds.rejected_rewards.sum(),
                "rewards/accuracies": ((odds.chosen_rewards > odds.rejected_rewards).float() * valid).sum(),
                "rewards/margins": (odds.chosen_rewards - odds.rejected_rewards).sum(),
                "log_odds_ratio": odds.log_sigmoid_odds.detach().sum(),
                "log_odds_chosen": odds.log_odds.detach().sum(),
                "logits/chosen": lm[:pairs].sum(),
                "logits/rejected": lm[pairs:].sum(),
                "tokens/chosen": completion[:pairs].sum(),
                "tokens/rejected": completion[pairs:].sum(),
                "nll/sum": -nll_logp_sum.detach(),
                "nll/tokens": nll_mask.sum(),
            }
            store = self._metric_sums[mode]
            for key, value in sums.items():
                store[key] = store[key] + value.detach().double()

    def _pop_metrics(self, mode: str) -> dict[str, float]:
        store = self._metric_sums[mode]
        if not store:
            return {}
        keys = sorted(store)
        values = torch.stack([torch.as_tensor(store[k], dtype=torch.float64, device=self.args.device) for k in keys])
        if self.args.world_size > 1:
            values = self.accelerator.reduce(values, reduction="sum")
        totals = dict(zip(keys, values.tolist(), strict=True))
        self._metric_sums[mode] = defaultdict(float)
        beta = self.args.beta
        pairs = max(totals["pairs"], 1.0)
        metrics = {
            name: totals[name] / pairs
            for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                         "log_odds_ratio", "log_odds_chosen")
        }
        metrics["logps/chosen"] = metrics["rewards/chosen"] / beta if beta else math.nan
        metrics["logps/rejected"] = metrics["rewards/rejected"] / beta if beta else math.nan
        metrics["logits/chosen"] = totals["logits/chosen"] / max(totals["tokens/chosen"], 1.0)
        metrics["logits/rejected"] = totals["logits/rejected"] / max(totals["tokens/rejected"], 1.0)
        metrics["nll_loss"] = totals["nll/sum"] / max(totals["nll/tokens"], 1.0)
        return {name: metrics[name] for name in METRIC_NAMES}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        metrics = self._pop_metrics(mode)
        prefix = "eval_" if mode == "eval" else ""
        logs.update({f"{prefix}{name}": value for name, value in metrics.items()})
        super().log(logs, start_time)

    # ---- evaluation ---------------------------------------------------------------------
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
