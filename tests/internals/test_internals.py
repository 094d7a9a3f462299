"""The contract with ``transformers.Trainer`` that :mod:`orpo.internals.private` relies on.

Each test names the transformers version and the piece that changed, so an upgrade that breaks
orpo's checkpoints, exact resume or non-finite guard fails here, loudly, before anywhere else.
A plain ``Trainer`` on a 5-parameter model keeps this about transformers, not about orpo.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any

import pytest
import torch
import transformers
from transformers import Trainer, TrainerCallback, TrainingArguments, trainer_utils

from orpo.internals import private as internals
from orpo.training.reliability.checkpoint import CHECKPOINT_PREFIX, TRAINER_STATE_NAME
from orpo.training.reliability.optimizer import GatedOptimizer

VERSION = transformers.__version__


def broken(piece: str, relied_on_by: str) -> str:
    return (
        f"transformers {VERSION}: {piece} - orpo.internals.private.{relied_on_by} relies on it; "
        "adapt that function (and only it) to this version"
    )


# ---- signatures ---------------------------------------------------------------------------------
SIGNATURES = {
    # Trainer member: (parameters it must accept, the function relying on it)
    "_get_output_dir": (("trial",), "run_dir"),
    "save_model": (("output_dir", "_internal_call"), "write_checkpoint"),
    "_save_optimizer_and_scheduler": (("output_dir",), "write_checkpoint"),
    "_save_scaler": (("output_dir",), "write_checkpoint"),
    "_save_rng_state": (("output_dir",), "write_checkpoint"),
    "store_flos": ((), "write_checkpoint"),
    "_push_from_checkpoint": (("checkpoint_folder",), "finish_checkpoint"),
    "_prepare_inputs": (("inputs",), "prepare_inputs"),
    "_save": (("output_dir", "state_dict"), "save_weights"),
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_trainer_methods_relied_on_exist_with_their_parameters(name):
    wanted, user = SIGNATURES[name]
    method = getattr(Trainer, name, None)
    assert callable(method), broken(f"Trainer.{name} no longer exists", user)
    parameters = list(inspect.signature(method).parameters)
    missing = [p for p in wanted if p not in parameters]
    assert not missing, broken(f"Trainer.{name}{inspect.signature(method)} lost parameter(s) {missing}", user)


@pytest.mark.parametrize("name", sorted(internals.OVERRIDDEN))
def test_overridden_methods_keep_their_signature(name):
    method = getattr(Trainer, name, None)
    assert callable(method), broken(f"Trainer.{name}, which ORPOTrainer overrides, no longer exists", "OVERRIDDEN")
    parameters = tuple(inspect.signature(method).parameters)
    assert parameters == internals.OVERRIDDEN[name], broken(
        f"Trainer.{name} now takes {parameters}, ORPOTrainer overrides it as {internals.OVERRIDDEN[name]}",
        "OVERRIDDEN",
    )


def test_rotate_checkpoints_and_checkpoint_folder_name():
    parameters = inspect.signature(trainer_utils.rotate_checkpoints).parameters
    for name in ("output_dir", "save_total_limit", "best_model_checkpoint", "use_mtime"):
        assert name in parameters, broken(
            f"trainer_utils.rotate_checkpoints lost parameter {name!r}", "finish_checkpoint"
        )
    assert f"{trainer_utils.PREFIX_CHECKPOINT_DIR}-" == CHECKPOINT_PREFIX, broken(
        f"checkpoint folders are now named {trainer_utils.PREFIX_CHECKPOINT_DIR}-<step>", "record_best_checkpoint"
    )
    assert TRAINER_STATE_NAME == transformers.trainer.TRAINER_STATE_NAME, broken(
        f"the trainer state file is now {transformers.trainer.TRAINER_STATE_NAME}", "save_trainer_state"
    )


# ---- behaviour, on a tiny plain Trainer -----------------------------------------------------------
class Regression(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": ((self.linear(x).squeeze(-1) - labels) ** 2).mean()}


def rows(n: int = 8) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(4, generator=generator), "labels": torch.tensor(float(i % 2))} for i in range(n)]


def arguments(output_dir: Any, **overrides: Any) -> TrainingArguments:
    values = {
        "output_dir": str(output_dir),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "learning_rate": 0.1,
        "logging_steps": 2,
        "save_strategy": "steps",
        "save_steps": 1,
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
    }
    values.update(overrides)
    return TrainingArguments(**values)


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.trainer: Any = None
        self.events: list[Any] = []

    def on_train_begin(self, args, state, control, **kwargs):
        tr_loss = getattr(self.trainer, "_tr_loss", None)
        self.events.append(("train_begin", tr_loss, getattr(self.trainer, "_globalstep_last_logged", None)))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.events.append("pre_optimizer_step")

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.events.append("optimizer_step")


class RecordingTrainer(Trainer):
    """Records what orpo relies on: when the hooks run, and the loop state they see."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.recorder = Recorder()
        super().__init__(*args, callbacks=[self.recorder], **kwargs)
        self.recorder.trainer = self

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if not isinstance(self.optimizer, GatedOptimizer):
            self.optimizer = optimizer = GatedOptimizer(optimizer, self._gate)
        return optimizer

    def _gate(self) -> bool:
        self.recorder.events.append("step")
        return True

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.recorder.events.append(("micro_batch", internals.is_window_end(self)))
        return loss

    def _save_checkpoint(self, model, trial):
        self.recorder.events.append(("save", self.state.global_step, internals.unlogged_loss(self)))
        super()._save_checkpoint(model, trial)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    trainer = RecordingTrainer(model=Regression(), args=arguments(tmp_path_factory.mktemp("run")), train_dataset=rows())
    trainer.train()
    return trainer


def test_loop_state_is_reset_before_on_train_begin(recorded):
    begin = recorded.recorder.events[0]
    assert begin[0] == "train_begin", broken(
        "on_train_begin is no longer the first loop event", "restore_unlogged_loss"
    )
    _, tr_loss, last_logged = begin
    assert torch.is_tensor(tr_loss) and float(tr_loss) == 0.0, broken(
        f"Trainer._tr_loss is {tr_loss!r} at on_train_begin, not a zero tensor", "restore_unlogged_loss"
    )
    assert last_logged == 0, broken(
        f"Trainer._globalstep_last_logged is {last_logged!r} at on_train_begin", "restore_unlogged_loss"
    )


def test_unlogged_loss_at_checkpoint_time(recorded):
    saves = [event for event in recorded.recorder.events if event[0] == "save"]
    assert [step for _, step, _ in saves] == [1, 2], broken(
        "Trainer no longer calls _save_checkpoint per save step", "OVERRIDDEN"
    )
    (_, _, (loss_1, logged_1)), (_, _, (loss_2, logged_2)) = saves
    logged = [entry["loss"] for entry in recorded.state.log_history if "loss" in entry]
    # Step 1 is not logged yet (logging_steps=2): its loss is waiting in _tr_loss; step 2 logged both.
    assert loss_1 > 0.0 and logged_1 == 0, broken(
        "_tr_loss/_globalstep_last_logged do not hold the unlogged loss", "unlogged_loss"
    )
    assert loss_2 == 0.0 and logged_2 == 2, broken("logging no longer resets _tr_loss", "unlogged_loss")
    assert logged and logged[0] > 0.0


def test_sync_gradients_marks_the_last_micro_batch(recorded):
    ends = [event[1] for event in recorded.recorder.events if isinstance(event, tuple) and event[0] == "micro_batch"]
    assert ends == [False, True, False, True], broken(
        f"accelerator.sync_gradients per micro-batch is {ends}, not True only on each window's last", "is_window_end"
    )


def test_optimizer_hooks_surround_the_optimizer_it_created(recorded):
    order = [event for event in recorded.recorder.events if isinstance(event, str)]
    assert order == ["pre_optimizer_step", "step", "optimizer_step"] * 2, broken(
        f"the optimizer events run as {order}: the guard judges in on_pre_optimizer_step and the optimizer created "
        "in create_optimizer (behind accelerate's wrapper) must be the one stepped",
        "OVERRIDDEN",
    )


def test_write_checkpoint_writes_what_trainer_writes(tmp_path):
    """Our savers, called into another folder right after Trainer's own save, write the same files, byte for byte."""
    ours = tmp_path / "ours"

    class Twin(Trainer):
        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            internals.write_checkpoint(self, str(ours), internals.run_dir(self, trial), trial)
            internals.save_trainer_state(self, str(ours))

    Twin(model=Regression(), args=arguments(tmp_path / "run", max_steps=1), train_dataset=rows()).train()
    theirs = tmp_path / "run" / f"{CHECKPOINT_PREFIX}1"

    def files(root: Any) -> list[str]:
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names)

    assert files(ours) == files(theirs), broken(
        f"Trainer._save_checkpoint writes {files(theirs)}, orpo's savers {files(ours)}", "write_checkpoint"
    )
    ours_state = json.loads((ours / TRAINER_STATE_NAME).read_text())
    their_state = json.loads((theirs / TRAINER_STATE_NAME).read_text())
    assert ours_state == their_state, broken("trainer_state.json differs from Trainer's", "save_trainer_state")
    for name in files(theirs):
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), broken(
            f"{name} differs from Trainer's", "write_checkpoint"
        )


def test_activation_checkpointing_is_non_reentrant_by_default(tokenizer, tmp_path):
    """orpo leaves ``activation_checkpointing_kwargs`` unset and relies on transformers' non-reentrant default
    (reentrant checkpointing loses the gradients of adapters on frozen inputs)."""
    from orpo.demo.tiny import tiny_causal_lm
    from orpo.internals.releases import enable_activation_checkpointing

    model = tiny_causal_lm(tokenizer)
    enable_activation_checkpointing(model)
    functions = [
        m._gradient_checkpointing_func for m in model.modules() if getattr(m, "_gradient_checkpointing_func", None)
    ]
    assert functions, broken("activation_checkpointing_enable() installs no checkpointing function", "(ORPOTrainer)")
    assert all(f.keywords == {"use_reentrant": False} for f in functions), broken(
        f"activation checkpointing defaults to {functions[0].keywords}, not use_reentrant=False", "(ORPOTrainer)"
    )


def test_save_weights_writes_what_save_model_writes(tmp_path):
    """From a state dict gathered beforehand, the same files as ``save_model``, the weights byte for byte."""
    trainer = Trainer(model=Regression(), args=arguments(tmp_path / "run", max_steps=1), train_dataset=rows())
    trainer.save_model(str(tmp_path / "theirs"))
    internals.save_weights(trainer, str(tmp_path / "ours"), trainer.model.state_dict())
    theirs, ours = sorted(os.listdir(tmp_path / "theirs")), sorted(os.listdir(tmp_path / "ours"))
    assert ours == theirs, broken(f"save_model writes {theirs}, Trainer._save {ours}", "save_weights")
    for name in theirs:
        if name != "training_args.bin":  # a pickle of the args: equal values, not necessarily equal bytes
            assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes(), broken(
                f"{name} differs from save_model's", "save_weights"
            )


# ---- attention (orpo.scoring.attention, orpo.scoring.routing) ---------------------------------------------------
def test_the_flash_attention_forward_takes_what_orpo_passes():
    from transformers import modeling_flash_attention_utils as flash

    function = getattr(flash, "_flash_attention_forward", None)
    assert callable(function), broken(
        "modeling_flash_attention_utils._flash_attention_forward is gone", "flash_attention_forward"
    )
    parameters = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    positional = list(parameters)[:5]
    assert positional == ["query_states", "key_states", "value_states", "attention_mask", "query_length"], broken(
        f"_flash_attention_forward's leading parameters are now {positional}", "flash_attention_forward"
    )
    missing = [name for name in internals.FLASH_KWARGS if name not in parameters and not takes_any]
    assert not missing, broken(f"_flash_attention_forward lost keyword(s) {missing}", "flash_attention_forward")


def test_the_attention_registry_and_the_configs_current_implementation():
    from transformers import AttentionInterface, AutoModelForCausalLM, LlamaConfig

    assert isinstance(getattr(AttentionInterface, "_global_mapping", None), dict), broken(
        "AttentionInterface._global_mapping is gone", "attention_registered"
    )
    assert internals.attention_registered("sdpa") and not internals.attention_registered("orpo_nothing")
    AttentionInterface.register("orpo_contract_probe", AttentionInterface()["sdpa"])
    assert internals.attention_registered("orpo_contract_probe")
    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    assert internals.attn_implementation(model.config) == "eager", broken(
        "PretrainedConfig._attn_implementation no longer names the loaded attention", "attn_implementation"
    )
    model.set_attn_implementation("orpo_contract_probe")
    assert internals.attn_implementation(model.config) == "orpo_contract_probe", broken(
        "set_attn_implementation no longer shows in config._attn_implementation", "attn_implementation"
    )


def test_the_router_recorder_of_moe_models():
    from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

    small = {"vocab_size": 16, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1}
    mixtral = AutoModelForCausalLM.from_config(MixtralConfig(**small, num_attention_heads=2, num_local_experts=2))
    assert internals.router_recorder(mixtral) == (MixtralTopKRouter, 0, None), broken(
        "_can_record_outputs['router_logits'] no longer names Mixtral's router module", "router_recorder"
    )
    dense = AutoModelForCausalLM.from_config(LlamaConfig(**small, num_attention_heads=2))
    assert internals.router_recorder(dense) is None
