"""Vision-language ORPO end to end: tiny random-init Qwen2-VL- and LLaVA-style models, generated images."""

from __future__ import annotations

import math

import pytest
import torch

from orpo import METRIC_NAMES, ORPOConfig, ORPOTrainer
from orpo.demo.tiny import build_vlm_processor, make_image, tiny_vlm
from orpo.models.vision import find_vision_tower

CORPUS = ["What color is the image? red blue green yes no idea a square"] * 10
COLORS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 160, 0)}
STYLES = ("qwen2_vl", "llava")


@pytest.fixture(scope="module")
def processors():
    return {style: build_vlm_processor(CORPUS, style) for style in STYLES}


def color_pairs(n: int = 12) -> list[dict]:
    """The chosen answer names the image's colour; the rejected one does not."""
    names = list(COLORS)
    rows = []
    for i in range(n):
        name, other = names[i % 3], names[(i + 1) % 3]
        size = (20 + 4 * (i % 3), 24 - 4 * (i % 2))
        rows.append(
            {
                "prompt": "What color is it?",
                "chosen": f" {name}",
                "rejected": f" {other}",
                "images": [make_image(size, COLORS[name])],
            }
        )
    return rows


def config(tmp_path, **overrides) -> ORPOConfig:
    values = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 4,
        "max_steps": 5,
        "learning_rate": 5e-3,
        "logging_steps": 1,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        "max_length": 128,
        "max_prompt_length": 64,
    }
    values.update(overrides)
    return ORPOConfig(**values)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}


def train_losses(trainer: ORPOTrainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def check_metrics(trainer: ORPOTrainer) -> None:
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged
    for entry in logged:
        for name in METRIC_NAMES:
            assert name in entry and math.isfinite(entry[name]), (name, entry)


@pytest.mark.parametrize("style", STYLES)
def test_vlm_trains_with_finite_decreasing_loss(tmp_path, processors, style):
    processor = processors[style]
    model = tiny_vlm(processor, style)
    before = snapshot(model)
    trainer = ORPOTrainer(model=model, args=config(tmp_path), train_dataset=color_pairs(), processing_class=processor)
    trainer.train()
    losses = train_losses(trainer)
    assert len(losses) == 5 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    check_metrics(trainer)
    tower, _ = find_vision_tower(model)
    moved = changed(before, model)
    assert any(name.startswith(tower + ".") for name in moved)  # the vision tower trains by default
    assert any("language_model" in name for name in moved)


@pytest.mark.parametrize("style", STYLES)
def test_freeze_vision_tower_leaves_it_unchanged(tmp_path, processors, style):
    processor = processors[style]
    model = tiny_vlm(processor, style)
    tower, _ = find_vision_tower(model)
    before = snapshot(model)
    trainer = ORPOTrainer(
        model=model,
        args=config(tmp_path, max_steps=3, freeze_vision_tower=True),
        train_dataset=color_pairs(8),
        processing_class=processor,
    )
    trainer.train()
    moved = changed(before, model)
    assert moved and not any(name.startswith(tower + ".") for name in moved)
    assert any("language_model" in name for name in moved)
    if style == "llava":
        assert any("multi_modal_projector" in name for name in moved)  # the projector still trains


@pytest.mark.parametrize("style", STYLES)
def test_lora_on_the_language_part_changes_only_adapters(tmp_path, processors, style):
    from peft import LoraConfig

    processor = processors[style]
    model = tiny_vlm(processor, style)
    if style == "llava":
        # CLIP's attention also has q_proj/v_proj: freeze_vision_tower keeps its adapters untouched.
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
        args = config(tmp_path, max_steps=3, learning_rate=2e-2, freeze_vision_tower=True)
    else:
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", lora_dropout=0.0)
        args = config(tmp_path, max_steps=3, learning_rate=2e-2)
    trainer = ORPOTrainer(
        model=model, args=args, train_dataset=color_pairs(8), processing_class=processor, peft_config=lora
    )
    peft_model = trainer.model
    before = snapshot(peft_model)
    trainer.train()
    moved = changed(before, peft_model)
    if style == "llava":
        assert any("vision_tower" in name and "lora_" in name for name in before)  # frozen adapters exist
    assert moved and all("lora_" in name for name in moved)
    assert all("language_model" in name for name in moved)
    check_metrics(trainer)


def test_eval_save_and_trainer_from_a_local_path(tmp_path, processors):
    """model= a path: load_model picks AutoModelForImageTextToText, load_tokenizer the processor."""
    from orpo.models.loading import load_model, load_processor

    processor = processors["llava"]
    source = tmp_path / "tiny-llava"
    tiny_vlm(processor, "llava").save_pretrained(source)
    processor.save_pretrained(source)
    assert type(load_model(str(source))).__name__ == "LlavaForConditionalGeneration"
    loaded = load_processor(str(source))
    assert loaded.image_processor is not None and loaded.chat_template is not None

    args = config(tmp_path / "out", max_steps=2, eval_strategy="no")
    trainer = ORPOTrainer(model=str(source), args=args, train_dataset=color_pairs(8), eval_dataset=color_pairs(4))
    assert trainer.model_kind.name == "vision"
    trainer.train()
    metrics = trainer.evaluate()
    for name in METRIC_NAMES:
        assert math.isfinite(metrics[f"eval_{name}"])
    trainer.save_model()
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert (tmp_path / "out" / "processor_config.json").exists()


def test_remove_unused_columns_keeps_the_images(tmp_path, processors):
    processor = processors["qwen2_vl"]
    trainer = ORPOTrainer(
        model=tiny_vlm(processor),
        args=config(tmp_path, max_steps=1, remove_unused_columns=True),
        train_dataset=color_pairs(4),
        processing_class=processor,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert "pixel_values" in batch and "image_grid_thw" in batch
    trainer.train()
    assert math.isfinite(train_losses(trainer)[0])


@pytest.mark.parametrize("style", STYLES)
def test_fused_head_is_exact_and_used_on_image_batches(tmp_path, processors, style):
    """Image batches are verified whole (patches do not slice by row), then take the fused LM head."""
    from orpo.scoring.logps import fused_scores, plain_scores
    from orpo.scoring.model_view import output_head

    processor = processors[style]
    model = tiny_vlm(processor, style).double()
    trainer = ORPOTrainer(model=model, args=config(tmp_path), train_dataset=color_pairs(4), processing_class=processor)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    batch["pixel_values"] = batch["pixel_values"].double()
    results = []
    for score in (plain_scores, lambda m, b, i: fused_scores(m, b, i, output_head(m))):
        model.zero_grad()
        logps = score(model, batch, -100).logps
        logps.sum().backward()
        results.append((logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (plain, plain_grads), (fused, fused_grads) = results
    assert (plain != 0).any() and torch.allclose(plain, fused, rtol=1e-10, atol=1e-10)
    assert plain_grads.keys() == fused_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, fused_grads[name], rtol=1e-8, atol=1e-10), name
    model.float()
    trainer.train()
    assert trainer.scorer.uses_fused is True
