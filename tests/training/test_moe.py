"""Mixture-of-experts models train in every layout with the router's load-balancing loss, as TRL's
ORPOTrainer adds it: ``loss = ORPO loss + router_aux_loss_coef * aux_loss``, ``aux_loss`` logged.

Tiny random-init Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GraniteMoE and PhiMoE (orpo.demo.tiny.tiny_moe_lm),
full fine-tuning and LoRA, and an interrupted run resumed exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _reliability import LogRecorder, StopAt, make_args, max_diff, weights
from conftest import learnable_pairs
from orpo import ORPOConfig, ORPOTrainer
from orpo.demo.tiny import MOE_KINDS, tiny_causal_lm, tiny_moe_lm
from orpo.internals.private import router_recorder

COEF = 0.5


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def _trainer(tokenizer, out, kind="mixtral", peft=False, model=None, callbacks=(), **overrides):
    values = {
        "max_steps": 2,
        "gradient_accumulation_steps": 1,
        "warmup_steps": 0,
        "save_strategy": "no",
        "output_router_logits": True,
        "router_aux_loss_coef": COEF,
        **overrides,
    }
    recorder = LogRecorder()
    trainer = ORPOTrainer(
        model=model if model is not None else tiny_moe_lm(tokenizer, kind),
        args=make_args(str(out), **values),
        train_dataset=learnable_pairs(8),
        eval_dataset=learnable_pairs(4, seed=1),
        processing_class=tokenizer,
        peft_config=_lora() if peft else None,
        callbacks=[recorder, *callbacks],
    )
    trainer.recorder = recorder
    return trainer


def _router_weights(model) -> dict[str, torch.Tensor]:
    return {name: value for name, value in weights(model).items() if ".gate." in f".{name}" or "router" in name}


def _pair_of_runs(tokenizer, tmp_path, kind="mixtral", peft=False, **overrides):
    """The same first batch trained with the load-balancing term (COEF) and with coefficient 0."""
    runs = {}
    for coef in (COEF, 0.0):
        trainer = _trainer(tokenizer, tmp_path / f"{kind}-{coef}", kind, peft, router_aux_loss_coef=coef, **overrides)
        before = weights(trainer.model, trainable_only=peft)
        trainer.train()
        runs[coef] = (trainer, before)
    return runs


def _assert_aux_added(runs) -> None:
    (with_aux, before), (without, _) = runs[COEF], runs[0.0]
    first, plain = with_aux.recorder.logs[0], without.recorder.logs[0]
    assert first["aux_loss"] == plain["aux_loss"] > 0  # the same batch and weights: the same router logits
    assert first["nll_loss"] == plain["nll_loss"] and first["log_odds_ratio"] == plain["log_odds_ratio"]
    assert first["loss"] - plain["loss"] == pytest.approx(COEF * first["aux_loss"], abs=1e-12, rel=0)
    assert first["loss"] == pytest.approx(
        first["nll_loss"] - 0.1 * first["log_odds_ratio"] + COEF * first["aux_loss"], abs=1e-12, rel=0
    )
    assert all("aux_loss" in log for log in with_aux.recorder.logs if "loss" in log)
    peft = with_aux.model is not None and hasattr(with_aux.model, "peft_config")
    after = weights(with_aux.model, trainable_only=peft)
    assert max_diff(before, after) > 0  # parameters change
    # the term's gradient reaches the update: the two runs' second steps differ
    assert with_aux.recorder.logs[1]["nll_loss"] != without.recorder.logs[1]["nll_loss"]


@pytest.mark.parametrize("kind", list(MOE_KINDS))
def test_each_moe_family_trains_with_coef_times_aux_loss_in_the_default_layout(tokenizer, tmp_path, kind):
    if router_recorder(tiny_moe_lm(tokenizer, kind)) is None:
        # e.g. GraniteMoE at the transformers 5.3 floor: its router is not one transformers records, and orpo
        # refuses output_router_logits for it in one line (as for a dense model, tested below) rather than guess.
        pytest.skip(f"{kind}: this transformers release records no router logits for it")
    runs = _pair_of_runs(tokenizer, tmp_path, kind)
    trainer = runs[COEF][0]
    # the default layout (auto: shared_prompt on sdpa) runs as a row: the probe no longer fails on the router
    assert trainer.layout_choice.layout.value == "shared_prompt" and trainer.scorer.uses_shared_prompt is True
    _assert_aux_added(runs)
    # the router itself learns (full fine-tuning) and its weights feel the term
    routers = [_router_weights(t.model) for t, _ in runs.values()]
    assert routers[0] and max_diff(*routers) > 0


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
@pytest.mark.parametrize("layout", ["padded", "padding_free", "shared_prompt"])
def test_every_layout_and_the_fused_head(tokenizer, tmp_path, layout, fused):
    runs = _pair_of_runs(tokenizer, tmp_path, layout=layout, fused_lm_head=fused)
    trainer = runs[COEF][0]
    assert trainer.scorer.uses_fused is fused
    assert {"padded": None, "padding_free": trainer.scorer.uses_packing}.get(layout, True) in (None, True)
    _assert_aux_added(runs)


def test_padded_and_padding_free_count_the_same_tokens(tokenizer, tmp_path):
    logs = {}
    for layout in ("padded", "padding_free", "shared_prompt"):
        trainer = _trainer(tokenizer, tmp_path / layout, layout=layout, max_steps=1, pad_to_multiple_of=8)
        trainer.train()
        logs[layout] = trainer.recorder.logs[0]["aux_loss"]
    assert logs["padding_free"] == pytest.approx(logs["padded"], abs=1e-6, rel=0)  # no padding counted in either
    assert abs(logs["shared_prompt"] - logs["padded"]) > 1e-5  # each prompt once per pair


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe"])
def test_lora(tokenizer, tmp_path, kind):
    runs = _pair_of_runs(tokenizer, tmp_path, kind, peft=True)
    _assert_aux_added(runs)
    trainer = runs[COEF][0]
    assert not any(p.requires_grad for p in _router_weights(trainer.model).values())  # the base stays frozen


def test_eval_logs_aux_loss_and_adds_it(tokenizer, tmp_path):
    trainer = _trainer(tokenizer, tmp_path / "eval", max_steps=1)
    metrics = trainer.evaluate()
    assert metrics["eval_aux_loss"] > 0
    assert metrics["eval_loss"] == pytest.approx(
        metrics["eval_nll_loss"] - 0.1 * metrics["eval_log_odds_ratio"] + COEF * metrics["eval_aux_loss"],
        abs=1e-12,
        rel=0,
    )


def test_off_by_default_and_from_the_model_config(tokenizer, tmp_path):
    off = _trainer(tokenizer, tmp_path / "off", output_router_logits=None, router_aux_loss_coef=None, max_steps=1)
    off.train()
    assert "aux_loss" not in off.recorder.logs[0]
    model = tiny_moe_lm(tokenizer, "mixtral", output_router_logits=True, router_aux_loss_coef=0.25)
    on = _trainer(tokenizer, tmp_path / "on", model=model, output_router_logits=None, router_aux_loss_coef=None)
    on.train()
    log = on.recorder.logs[0]
    assert log["loss"] == pytest.approx(
        log["nll_loss"] - 0.1 * log["log_odds_ratio"] + 0.25 * log["aux_loss"], abs=1e-12, rel=0
    )


def test_options_leave_the_callers_objects_as_given_and_apply_to_a_loaded_model(tokenizer, tmp_path):
    model = tiny_moe_lm(tokenizer, "mixtral")
    args = make_args(str(tmp_path / "given"), max_steps=1, output_router_logits=True, router_aux_loss_coef=COEF)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=learnable_pairs(4), processing_class=tokenizer)
    trainer.train()
    assert model.config.output_router_logits is False and model.config.router_aux_loss_coef == 0.001
    assert args.output_router_logits is True and args.router_aux_loss_coef == COEF
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    named = ORPOTrainer(model=str(saved), args=args, train_dataset=learnable_pairs(4), processing_class=tokenizer)
    assert named.model.config.output_router_logits is True and named.model.config.router_aux_loss_coef == COEF


def test_a_dense_model_asked_for_router_logits_is_refused(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"^output_router_logits: LlamaForCausalLM has no router"):
        ORPOTrainer(
            model=tiny_causal_lm(tokenizer),
            args=make_args(str(tmp_path / "dense"), output_router_logits=True),
            train_dataset=learnable_pairs(4),
            processing_class=tokenizer,
        )


def test_flags_and_yaml_keys(tmp_path):
    from orpo.cli.train import train_sources
    from orpo.config.options import merge
    from orpo.config.resolve import resolve

    values = merge(*train_sources(["--output-router-logits", "--router-aux-loss-coef", "0.02"])[0])
    assert values["output_router_logits"] is True and values["router_aux_loss_coef"] == 0.02
    recipe = tmp_path / "moe.yaml"
    recipe.write_text("model: m\ndata: d.jsonl\noutput_router_logits: true\nrouter_aux_loss_coef: 0.02\n")
    config = resolve(*train_sources(["--config", str(recipe)])[0]).config
    assert config.output_router_logits is True and config.router_aux_loss_coef == 0.02
    with pytest.raises(ValueError, match=r"ORPOConfig.router_aux_loss_coef=-1: must be a finite number >= 0"):
        ORPOConfig(output_dir=str(tmp_path), router_aux_loss_coef=-1)


@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
def test_an_interrupted_run_resumes_exactly(tokenizer, tmp_path, peft):
    """A full checkpoint's experts come back too: orpo writes checkpoints in the layout the model holds
    (``Trainer`` resumes with a plain ``load_state_dict``, which would not undo transformers' per-expert
    save format); the final model keeps transformers' original format."""
    common = {"max_steps": 4, "gradient_accumulation_steps": 2, "logging_steps": 1, "save_strategy": "steps"}
    straight = _trainer(tokenizer, tmp_path / "straight", peft=peft, **common)
    straight.train()
    out = tmp_path / "resumed"
    first = _trainer(tokenizer, out, peft=peft, callbacks=[StopAt(2)], **common)
    first.train()
    model = tiny_moe_lm(tokenizer, "mixtral", seed=0 if peft else 123)  # a full checkpoint brings its weights
    second = _trainer(tokenizer, out, peft=peft, model=model, **common)
    second.train(resume_from_checkpoint=True)
    combined = first.recorder.logs + second.recorder.logs
    assert [log["step"] for log in combined] == [1, 2, 3, 4]
    assert all("aux_loss" in log for log in combined)
    for expected, got in zip(straight.recorder.logs, combined, strict=True):
        assert got == expected, f"step {expected['step']}"
    assert max_diff(weights(straight.model, trainable_only=peft), weights(second.model, trainable_only=peft)) == 0.0
    if not peft:
        import safetensors.torch

        checkpoint = safetensors.torch.load_file(str(out / "checkpoint-2" / "model.safetensors"))
        assert any("experts.gate_up_proj" in key for key in checkpoint)  # as held: one fused tensor per layer
        final = tmp_path / "final"
        second.save_model(str(final))
        assert any(".experts.0." in key for key in safetensors.torch.load_file(str(final / "model.safetensors")))


def test_the_summary_shows_aux_loss(tmp_path):
    from types import SimpleNamespace

    from orpo.training.summary import summary_table, write_summary

    history = [{"step": 1, "loss": 3.0, "aux_loss": 2.25}, {"step": 2, "loss": 2.0, "aux_loss": 2.125}]
    result = SimpleNamespace(
        log_history=history,
        eval_metrics={"eval_aux_loss": 2.0},
        train_metrics={},
        output_dir=str(tmp_path),
        merged=False,
        adapter_dir=None,
        plot_path=None,
        summary_path=None,
        health=[],
        steps_run=2,
        resumed_from=None,
    )
    row = next(line for line in summary_table(result).splitlines() if line.startswith("aux_loss"))
    assert row.split() == ["aux_loss", "2.250", "2.125", "2.000"]
    payload = json.loads(Path(write_summary(tmp_path / "s.json", result)).read_text())
    assert payload["first_last"]["aux_loss"] == {"first": 2.25, "last": 2.125}
    result.log_history = [{"step": 1, "loss": 3.0}]
    assert "aux_loss" not in json.loads(Path(write_summary(tmp_path / "d.json", result)).read_text())["first_last"]
