"""``generate_during_eval``: a few greedy generations saved next to the eval metrics.

Kept apart from the trainer: it only reads the trainer's model, tokenizer, arguments and state.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

from orpo.scoring.model_view import unwrap

logger = logging.getLogger(__name__)


def generate_samples(trainer: Any, dataset: Any, num_samples: int = 4, suffix: str = "") -> str | None:
    """Greedy generations for the first ``num_samples`` prompts of a tokenized eval dataset, written as
    JSONL to ``output_dir/generations/step-<global step><suffix>.jsonl``; returns the path (main process).

    New tokens are capped by ``max_completion_length`` (else what ``max_length`` leaves after the prompt),
    and at 256.

    Args:
        trainer: the :class:`~orpo.ORPOTrainer` whose model, tokenizer, arguments and step are used.
        dataset: the tokenized eval dataset (with ``prompt_input_ids``); None or without prompts: nothing is done.
        num_samples: how many prompts, from the first.
        suffix: appended to the file name (e.g. an eval dataset's name).

    Returns:
        The JSONL file's path on the main process; None elsewhere, and when skipped (no prompts, or a model
        kind that cannot generate).
    """
    if dataset is None or len(dataset) == 0 or "prompt_input_ids" not in (dataset.column_names or []):
        return None
    if trainer.model_kind.cannot_generate:
        logger.info("generate_during_eval: skipped for %s", trainer.model_kind.cannot_generate)
        return None
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    model = trainer.model
    generation_config = getattr(unwrap(model), "generation_config", None)
    eos = [tokenizer.eos_token_id]
    config_eos = getattr(generation_config, "eos_token_id", None)
    eos += [e for e in (config_eos if isinstance(config_eos, list) else [config_eos]) if e is not None and e not in eos]
    pad = trainer.args.padding_value if trainer.args.padding_value is not None else tokenizer.pad_token_id
    records = []
    was_training = model.training
    model.eval()
    try:
        for index in range(min(num_samples, len(dataset))):
            row = dataset[index]
            prompt = torch.tensor([row["prompt_input_ids"]], dtype=torch.long, device=trainer.args.device)
            if trainer.args.max_completion_length is not None:
                budget = trainer.args.max_completion_length
            elif trainer.args.max_length is not None and not trainer.model_kind.generates_new_tokens_only:
                budget = max(trainer.args.max_length - prompt.shape[1], 1)
            else:
                budget = trainer.args.max_length or 128
            with torch.no_grad(), trainer.compute_loss_context_manager():
                output = model.generate(
                    input_ids=prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=min(budget, 256),
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=pad,
                )
            new_tokens = trainer.model_kind.new_tokens(output, prompt.shape[1])
            records.append(
                {
                    "step": trainer.state.global_step,
                    "prompt": row.get("prompt"),
                    "chosen": row.get("chosen"),
                    "rejected": row.get("rejected"),
                    "generation": tokenizer.decode(new_tokens, skip_special_tokens=True),
                }
            )
    finally:
        model.train(was_training)
    if not trainer.is_world_process_zero():
        return None
    folder = os.path.join(trainer.args.output_dir, "generations")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step-{trainer.state.global_step}{suffix}.jsonl")
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    logger.info("generate_during_eval: wrote %d generation(s) to %s", len(records), path)
    return path
