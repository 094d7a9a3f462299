"""orpo.internals.releases: what it changes is the same on every transformers release it runs on."""

from __future__ import annotations

import io

import pytest
import torch

from orpo import ORPOConfig, ORPOTrainer
from orpo.demo.tiny import tiny_causal_lm
from orpo.internals import releases as compat


def test_torch_loads_onto_an_indexed_cpu_device():
    """transformers 5.3-5.5 resume a multi-process CPU run with map_location=cpu:0."""
    compat.restore_indexed_cpu_locations()
    compat.restore_indexed_cpu_locations()  # once is enough; twice registers nothing more
    buffer = io.BytesIO()
    saved = {"exp_avg": torch.arange(5, dtype=torch.float32)}
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, map_location=torch.device("cpu:0"), weights_only=True)
    assert torch.equal(loaded["exp_avg"], saved["exp_avg"]) and loaded["exp_avg"].device.type == "cpu"
    with pytest.raises(RuntimeError, match="cpux"):
        torch.serialization.default_restore_location(torch.UntypedStorage(0), "cpux")


def test_neither_trainer_nor_accelerate_divides_the_loss_by_the_accumulation_steps(tokenizer, tmp_path):
    args = ORPOConfig(output_dir=str(tmp_path), gradient_accumulation_steps=4, report_to=[], save_strategy="no")
    trainer = ORPOTrainer(model=tiny_causal_lm(tokenizer), args=args, processing_class=tokenizer)
    assert trainer.accelerator.gradient_accumulation_steps == 1
    assert trainer.loss_is_scaled_for_ga is True
    if not compat.HAS_LOSS_IS_SCALED_FOR_GA:  # the older Trainer skips its division only for such a model
        assert trainer.model_accepts_loss_kwargs is True
    assert trainer.args.gradient_accumulation_steps == 4  # the Trainer still accumulates over 4 micro-batches
