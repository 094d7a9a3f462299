"""Shared pieces of the reliability tests, and a worker script for the multi-process ones.

As a module: ``make_args``, ``make_trainer``, callbacks that record logs or stop a run, weight
snapshots.  As a script (``python _reliability.py MODE ...`` or under ``torchrun``): trains a
tiny model on CPU and writes its logs and weights to a JSON / safetensors file, so a test can
compare runs made in other processes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch
from transformers import TrainerCallback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # tests/, for conftest's data (when run as a script)

from conftest import learnable_pairs  # noqa: E402

#: Keys of a log entry that depend on time or on the call, not on the training itself.
VOLATILE = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")


def make_args(output_dir: str, **overrides: Any) -> Any:
    from orpo import ORPOConfig

    values = {
        "output_dir": str(output_dir),
        "max_steps": 8,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 2,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 100,
        "report_to": [],
        "seed": 1,
        "disable_tqdm": True,
        "max_length": 64,
        "max_prompt_length": 32,
        "dataloader_num_workers": 0,
    }
    values.update(overrides)
    return ORPOConfig(**values)


def make_trainer(
    tokenizer: Any,
    output_dir: str,
    data: Any = None,
    peft: bool = False,
    callbacks: Any = (),
    model_seed: int = 0,
    **overrides: Any,
) -> Any:
    from orpo import ORPOTrainer
    from orpo.demo.tiny import tiny_causal_lm

    peft_config = None
    if peft:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        )
    recorder = LogRecorder()
    trainer = ORPOTrainer(
        model=tiny_causal_lm(tokenizer, seed=model_seed),
        args=make_args(output_dir, **overrides),
        train_dataset=learnable_pairs(24) if data is None else data,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[recorder, *callbacks],
    )
    trainer.recorder = recorder
    return trainer


class LogRecorder(TrainerCallback):
    """Every train log entry (with its step), volatile keys removed."""

    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        # The end-of-train summary (train_runtime, ...) is per call, not part of the training curve.
        if logs and "train_runtime" not in logs and not any(key.startswith("eval_") for key in logs):
            entry = {k: v for k, v in logs.items() if k not in VOLATILE}
            if set(entry) - {"epoch"}:
                self.logs.append({"step": state.global_step, **entry})


class StopAt(TrainerCallback):
    """Save and stop after step ``step``: what a SIGINT/SIGTERM does, without a signal."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


def weights(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().clone()
        for name, param in model.named_parameters()
        if param.requires_grad or not trainable_only
    }


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# ---- worker ---------------------------------------------------------------------------------
class _Progress(TrainerCallback):
    """Prints each finished step (for a parent waiting to send a signal), optionally slowly."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        print(f"STEP {state.global_step}", flush=True)
        if self.delay:
            time.sleep(self.delay)


def _worker(argv: list[str]) -> int:
    """MODE TOKENIZER_DIR OUTPUT_DIR RESULT_JSON [json overrides].

    Besides ORPOConfig fields the overrides may hold ``step_delay`` (seconds to sleep after each
    step), ``rows`` (dataset size), ``stop_at`` (save and stop after that step) and ``resume``.
    """
    import logging

    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    mode, tokenizer_dir, output_dir, result = argv[:4]
    overrides = json.loads(argv[4]) if len(argv) > 4 else {}
    delay = float(overrides.pop("step_delay", 0.0))
    rows = int(overrides.pop("rows", 24))
    resume = overrides.pop("resume", None)
    callbacks: list[Any] = [_Progress(delay)]
    if "stop_at" in overrides:
        callbacks.append(StopAt(int(overrides.pop("stop_at"))))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    trainer = make_trainer(tokenizer, output_dir, data=learnable_pairs(rows), callbacks=callbacks, **overrides)
    trainer.train(resume_from_checkpoint=resume)
    # Sharded (FSDP) parameters are gathered on every process: a collective.
    full = {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu().contiguous()
        for k, v in weights(trainer.model).items()
    }
    if trainer.args.process_index == 0:
        from safetensors.torch import save_file

        save_file(full, result + ".safetensors")
        with open(result, "w", encoding="utf-8") as handle:
            json.dump({"mode": mode, "world_size": trainer.args.world_size, "logs": trainer.recorder.logs}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
