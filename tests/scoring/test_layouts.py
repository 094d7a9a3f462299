"""Every layout gives the padded batch's ORPO loss and gradients (float64, through compute_loss), with
and without gradient checkpointing; the trainer chooses the layout once, logs it and switches the
model's attention (model_init's models too)."""

from __future__ import annotations

import logging

import pytest
import torch
from test_padding_free import varied_pairs

from _packed_rows import SHARED_GRAD_TOLERANCE
from orpo import ORPOConfig, ORPOTrainer
from orpo.demo.tiny import tiny_causal_lm

ROW_LAYOUTS = ("padding_free", "shared_prompt")


def _args(tmp_path, name, **overrides):
    values = {
        "output_dir": str(tmp_path / name),
        "per_device_train_batch_size": 4,
        "max_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "train_sampling_strategy": "sequential",
        "disable_tqdm": True,
        "max_length": 64,
        "max_prompt_length": 32,
        "nll_scope": "prompt_and_completion",
    }
    return ORPOConfig(**{**values, **overrides})


def _trainer(tokenizer, tmp_path, name, attn="sdpa", dtype=torch.float64, **overrides):
    model = tiny_causal_lm(tokenizer, attn_implementation=attn).to(dtype)
    args = _args(tmp_path, name, **overrides)
    return ORPOTrainer(model=model, args=args, train_dataset=varied_pairs(16), processing_class=tokenizer)


def _loss_and_grads(trainer, checkpointing=False):
    model = trainer.model
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    assert model.is_gradient_checkpointing is checkpointing
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(got, ref, tol, grad_tol=None):
    (loss, grads), (ref_loss, ref_grads) = got, ref
    torch.testing.assert_close(loss, ref_loss, rtol=tol, atol=tol)
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    grad_tol = tol if grad_tol is None else grad_tol
    for name, grad in grads.items():
        scale = max(ref_grads[name].abs().max().item(), 1.0)
        torch.testing.assert_close(grad, ref_grads[name], rtol=grad_tol, atol=grad_tol * scale, msg=name)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("layout", ROW_LAYOUTS)
def test_every_layout_gives_the_padded_loss_and_gradients_in_float64(tokenizer, tmp_path, layout, attn, fused):
    # the reference: padded rows through sdpa, float64 throughout (transformers' eager softmax runs in float32)
    reference = _loss_and_grads(_trainer(tokenizer, tmp_path, "padded", layout="padded", fused_lm_head=fused))
    trainer = _trainer(tokenizer, tmp_path, layout, attn, layout=layout, fused_lm_head=fused)
    assert trainer.layout_choice.layout.value == layout
    got = _loss_and_grads(trainer)
    assert trainer.scorer.uses_fused is fused
    assert (trainer.scorer.uses_packing or trainer.scorer.uses_shared_prompt) is True
    _assert_same(got, reference, 1e-10, SHARED_GRAD_TOLERANCE if layout == "shared_prompt" else None)


@pytest.mark.parametrize("layout", ["padded", *ROW_LAYOUTS])
def test_gradient_checkpointing_with_every_layout_and_the_fused_head(tokenizer, tmp_path, layout):
    plain = _loss_and_grads(_trainer(tokenizer, tmp_path, "plain", layout=layout))
    trainer = _trainer(tokenizer, tmp_path, "checkpointed", layout=layout)
    checkpointed = _loss_and_grads(trainer, checkpointing=True)
    assert trainer.scorer.uses_fused is True
    _assert_same(checkpointed, plain, 1e-12)


def test_the_trainer_logs_its_layout_once_and_leaves_the_config_as_given(tokenizer, tmp_path, caplog):
    args = _args(tmp_path, "auto")
    model = tiny_causal_lm(tokenizer, attn_implementation="eager")
    with caplog.at_level(logging.INFO, logger="orpo.scoring.routing"):
        trainer = ORPOTrainer(model=model, args=args, train_dataset=varied_pairs(8), processing_class=tokenizer)
    assert [r.getMessage() for r in caplog.records if r.name == "orpo.scoring.routing"] == [
        "layout: shared_prompt (auto: attention orpo_eager runs it)"
    ]
    assert model.config._attn_implementation == "orpo_eager"
    assert (args.layout, args.padding_free, args.shared_prompt) == ("auto", False, False)
    assert trainer.layout_choice.layout.value == "shared_prompt"


def test_a_users_collator_keeps_its_layout(tokenizer, tmp_path, caplog):
    from orpo.scoring.packing import ORPOPaddingFreeCollator

    collator = ORPOPaddingFreeCollator(pad_token_id=tokenizer.pad_token_id)
    model = tiny_causal_lm(tokenizer)
    with caplog.at_level(logging.INFO, logger="orpo.scoring.routing"):
        trainer = ORPOTrainer(
            model=model,
            args=_args(tmp_path, "own"),
            data_collator=collator,
            train_dataset=varied_pairs(8),
            processing_class=tokenizer,
        )
    assert trainer.data_collator is collator and trainer.layout_choice is None
    assert not [r for r in caplog.records if r.name == "orpo.scoring.routing"]
    assert model.config._attn_implementation == "sdpa"
    trainer.train()  # the scorer switches the attention on the first padding-free batch
    assert trainer.scorer.uses_packing is True
    assert model.config._attn_implementation == "orpo_sdpa"


def test_model_init_models_get_the_layouts_attention(tokenizer, tmp_path):
    made = []

    def model_init():
        made.append(tiny_causal_lm(tokenizer))
        return made[-1]

    trainer = ORPOTrainer(
        model_init=model_init, args=_args(tmp_path, "init"), train_dataset=varied_pairs(8), processing_class=tokenizer
    )
    assert trainer.layout_choice.layout.value == "shared_prompt"
    trainer.train()  # Trainer makes a new model here
    assert len(made) == 2 and trainer.model is made[1]
    assert [m.config._attn_implementation for m in made] == ["orpo_sdpa", "orpo_sdpa"]
    assert trainer.scorer.uses_shared_prompt is True
