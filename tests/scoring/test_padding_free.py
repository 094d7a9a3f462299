"""ORPOTrainer in every layout (chosen by `layout`, by the padding_free / shared_prompt switches, or
automatically) trains exactly like the padded trainer; group_by_length groups pairs of similar length."""

from __future__ import annotations

import random

import pytest
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from orpo import ORPOConfig, ORPOTrainer
from orpo.demo.tiny import tiny_causal_lm
from orpo.scoring.collate import ORPODataCollator
from orpo.scoring.packing import ORPOPaddingFreeCollator, ORPOSharedPromptCollator

WORDS = ["sky", "grass", "hello", "world", "numbers", "answer", "color", "green", "blue", "yes", "no"]


def varied_pairs(n: int = 24, seed: int = 0) -> list[dict[str, str]]:
    """Pairs whose prompt and completion lengths vary a lot (padding is then most of a padded batch)."""
    rng = random.Random(seed)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(low, high)))

    return [
        {"prompt": f"Question: {text(1, 20)}?", "chosen": f" yes {text(1, 15)}", "rejected": f" no {text(1, 15)}"}
        for _ in range(n)
    ]


def _trainer(tokenizer, tmp_path, name, arch="llama", pairs=24, **overrides):
    model = tiny_causal_lm(tokenizer, arch=arch, tie_word_embeddings=arch == "qwen2")
    model.config._attn_implementation = "sdpa"
    values = {
        "output_dir": str(tmp_path / name),
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "max_steps": 3,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "seed": 0,
        "train_sampling_strategy": "sequential",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "max_length": 64,
        "max_prompt_length": 32,
    }
    values.update(overrides)
    return ORPOTrainer(
        model=model, args=ORPOConfig(**values), train_dataset=varied_pairs(pairs), processing_class=tokenizer
    )


def _first_batch(trainer):
    features = [trainer.train_dataset[i] for i in range(trainer.args.per_device_train_batch_size)]
    return trainer.data_collator(features)


COLLATORS = {
    "padded": ORPODataCollator,
    "padding_free": ORPOPaddingFreeCollator,
    "shared_prompt": ORPOSharedPromptCollator,
}


def _uses_rows(trainer) -> bool | None:
    layout = trainer.layout_choice.layout.value
    return trainer.scorer.uses_packing if layout == "padding_free" else trainer.scorer.uses_shared_prompt


def _loss_grads_metrics(trainer):
    batch = _first_batch(trainer)
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, trainer._pop_metrics("train")


@pytest.mark.parametrize(
    ("arch", "nll_scope", "option", "layout"),
    [
        ("llama", "completion", {"padding_free": True}, "padding_free"),
        ("qwen2", "prompt_and_completion", {"layout": "padding_free"}, "padding_free"),
        ("qwen2", "prompt_and_completion", {"shared_prompt": True}, "shared_prompt"),
        ("llama", "completion", {"layout": "shared_prompt", "padding_free": True}, "shared_prompt"),
        ("llama", "prompt_and_completion", {}, "shared_prompt"),  # auto
    ],
)
def test_packed_loss_and_gradients_match_padded(tokenizer, tmp_path, arch, nll_scope, option, layout):
    padded = _trainer(tokenizer, tmp_path, "padded", arch=arch, nll_scope=nll_scope, layout="padded")
    packed = _trainer(tokenizer, tmp_path, "packed", arch=arch, nll_scope=nll_scope, **option)
    assert type(padded.data_collator) is ORPODataCollator
    assert type(packed.data_collator) is COLLATORS[layout]
    assert packed.layout_choice.layout.value == layout
    loss_a, grads_a, metrics_a = _loss_grads_metrics(padded)
    loss_b, grads_b, metrics_b = _loss_grads_metrics(packed)
    assert _uses_rows(packed) is True
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-6)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    for name, value in metrics_a.items():
        assert metrics_b[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize("layout", ["padding_free", "shared_prompt"])
def test_packed_training_matches_padded_run(tokenizer, tmp_path, layout):
    runs = []
    for name in ("padded", layout):
        trainer = _trainer(tokenizer, tmp_path, name, gradient_accumulation_steps=2, layout=name)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        runs.append((losses, params, trainer))
    (losses_a, params_a, _), (losses_b, params_b, packed) = runs
    assert _uses_rows(packed) is True
    assert len(losses_a) == len(losses_b) == 3
    assert losses_b[0] == pytest.approx(losses_a[0], rel=1e-6)
    assert losses_b == pytest.approx(losses_a, rel=1e-4)
    # Adam turns float32 rounding differences of near-zero gradient entries into update differences of
    # up to a fraction of lr (1e-2) per step; the exact gradient match is checked above, tightly.
    for name, value in params_a.items():
        torch.testing.assert_close(params_b[name], value, rtol=1e-4, atol=5e-5, msg=name)


def test_group_by_length_groups_pairs_of_similar_length(tokenizer, tmp_path):
    # LengthGroupedSampler sorts "megabatches" of up to 50 batches; 200 pairs in batches of 4 make 12.
    trainer = _trainer(
        tokenizer,
        tmp_path,
        "grouped",
        pairs=200,
        train_sampling_strategy="group_by_length",
        max_steps=2,
        layout="padded",
    )
    dataset = trainer.train_dataset
    assert "length" in dataset.column_names
    loader = trainer.get_train_dataloader()
    sampler = loader.batch_sampler.sampler
    assert isinstance(sampler, LengthGroupedSampler)
    assert sampler.lengths == dataset["length"]
    # The sampler's batches of 4 have a much smaller length spread than the data set's order.
    order = list(iter(sampler))
    size = trainer.args.per_device_train_batch_size
    lengths = dataset["length"]

    def spread(indices):
        batches = [indices[i : i + size] for i in range(0, len(indices), size)]
        return sum(max(lengths[j] for j in b) - min(lengths[j] for j in b) for b in batches)

    assert sorted(order) == list(range(len(dataset)))
    assert spread(order) < 0.5 * spread(list(range(len(dataset))))
    # Padding in the collated batches follows: the 'length' column is the padded row length.
    batch = next(iter(loader))
    assert batch["input_ids"].shape[1] == max(lengths[j] for j in order[:size])
    trainer.train()
    assert trainer.state.global_step == 2
