"""Encoder-decoder ORPO: tiny random-init T5 and BART with local BPE tokenizers."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from orpo import METRIC_NAMES, ORPOConfig, ORPOTrainer
from orpo.data import DataError
from orpo.demo.tiny import build_seq2seq_tokenizer, tiny_seq2seq_lm
from orpo.loss import selective_log_softmax
from orpo.models.encoder_decoder import (
    EncoderSpecials,
    Seq2SeqORPODataCollator,
    decoder_prefix,
    prepare_seq2seq_dataset,
)
from orpo.scoring.layouts import LAYOUT_KEY, Layout

CORPUS = [
    "Question about the sky and the grass? yes sky grass no hello world answer color green numbers",
] * 10
ARCHS = ("t5", "bart")


@pytest.fixture(scope="module")
def tokenizers():
    return {arch: build_seq2seq_tokenizer(CORPUS, arch) for arch in ARCHS}


def pairs(n: int = 12) -> list[dict[str, str]]:
    words = ["sky", "grass", "hello", "world", "answer", "color", "green", "numbers"]
    return [
        {
            "prompt": f"Question about {words[i % 8]} {words[(i + 3) % 8]}?",
            "chosen": f" yes {words[i % 8]}",
            "rejected": f" no {words[(i + 3) % 8]}",
        }
        for i in range(n)
    ]


def config(tmp_path, **overrides) -> ORPOConfig:
    values = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 4,
        "max_steps": 5,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        "max_length": 64,
        "max_prompt_length": 32,
    }
    values.update(overrides)
    return ORPOConfig(**values)


# ---- tokenization and batching -------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_encoder_input_labels_and_decoder_prefix(tmp_path, tokenizers, arch):
    tokenizer = tokenizers[arch]
    model = tiny_seq2seq_lm(tokenizer, arch)
    dataset, report = prepare_seq2seq_dataset(pairs(2), tokenizer, config(tmp_path))
    assert report.rows_out == 2
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    row = dataset[0]
    # The encoder sees the prompt with the tokenizer's own special tokens (T5: x </s>; BART: <s> x </s>).
    assert row["prompt_input_ids"] == tokenizer(pairs(1)[0]["prompt"])["input_ids"]
    for key in ("chosen_input_ids", "rejected_input_ids"):
        assert row[key][-1] == eos and row[key].count(eos) == 1
        assert tokenizer.bos_token_id not in row[key]
    prefix = decoder_prefix(model, tokenizer)
    assert prefix == ((pad,) if arch == "t5" else (eos, tokenizer.bos_token_id))

    collator = Seq2SeqORPODataCollator.from_args(model, tokenizer, config(tmp_path))
    features = [dataset[0], dataset[1]]
    batch = collator(features)
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "decoder_input_ids",
        "decoder_attention_mask",
        "labels",
        "score_index",
        LAYOUT_KEY,
    }
    assert batch[LAYOUT_KEY] is Layout.PADDED
    assert batch["input_ids"].shape[0] == batch["decoder_input_ids"].shape[0] == 4
    assert torch.equal(batch["input_ids"][:2], batch["input_ids"][2:])  # chosen and rejected share the encoder input
    width = batch["labels"].shape[1]
    for index in range(4):
        feature = features[index % 2]
        completion = feature["chosen_input_ids"] if index < 2 else feature["rejected_input_ids"]
        decoder = [*prefix, *completion]
        assert batch["decoder_input_ids"][index].tolist() == decoder + [pad] * (width - len(decoder))
        assert batch["decoder_attention_mask"][index].tolist() == [1] * len(decoder) + [0] * (width - len(decoder))
        labels = [-100] * len(prefix) + list(completion) + [-100] * (width - len(decoder))
        assert batch["labels"][index].tolist() == labels
        scored = [index * (width - 1) + col - 1 for col, label in enumerate(labels) if col and label != -100]
        assert [
            i for i in batch["score_index"].tolist() if index * (width - 1) <= i < (index + 1) * (width - 1)
        ] == scored
        prompt = feature["prompt_input_ids"]
        assert batch["input_ids"][index, : len(prompt)].tolist() == prompt
        assert batch["attention_mask"][index].sum() == len(prompt)


def test_truncation_of_encoder_and_decoder_sides(tmp_path, tokenizers):
    tokenizer = tokenizers["bart"]
    long = [{"prompt": "hello world " * 20 + "the end", "chosen": " yes" * 30, "rejected": " no"}]
    dataset, report = prepare_seq2seq_dataset(
        long, tokenizer, config(tmp_path, max_prompt_length=10, max_completion_length=8)
    )
    row = dataset[0]
    specials = EncoderSpecials.probe(tokenizer)
    assert specials.prefix == (tokenizer.bos_token_id,) and specials.suffix == (tokenizer.eos_token_id,)
    assert len(row["prompt_input_ids"]) == 10
    assert (
        row["prompt_input_ids"][0] == tokenizer.bos_token_id and row["prompt_input_ids"][-1] == tokenizer.eos_token_id
    )
    assert tokenizer.decode(row["prompt_input_ids"][1:-1]).endswith("the end")  # keep_end keeps the question
    assert len(row["chosen_input_ids"]) == 8 and row["rejected_input_ids"][-1] == tokenizer.eos_token_id
    assert report.tokenize.prompt_truncated == 1 and report.tokenize.chosen_truncated == 1
    start, _ = prepare_seq2seq_dataset(
        long, tokenizer, config(tmp_path, max_prompt_length=10, truncation_mode="keep_start")
    )
    assert tokenizer.decode(start[0]["prompt_input_ids"][1:-1]).startswith("hello world")
    # max_length bounds each decoder sequence when max_completion_length is unset.
    capped, _ = prepare_seq2seq_dataset(long, tokenizer, config(tmp_path, max_length=12, max_prompt_length=10))
    assert len(capped[0]["chosen_input_ids"]) == 12
    dropped_ok = [*long, *pairs(1)]
    kept, report = prepare_seq2seq_dataset(
        dropped_ok, tokenizer, config(tmp_path, max_prompt_length=10, on_too_long="drop")
    )
    assert len(kept) == 1 and report.rows_out == 1
    with pytest.raises(DataError) as info:
        prepare_seq2seq_dataset(long, tokenizer, config(tmp_path, max_prompt_length=10, on_too_long="error"))
    assert str(info.value) == (
        "train row 0: the prompt is longer than max_prompt_length=10 encoder tokens (1 such row(s) in the train "
        "data); raise the limits, or set on_too_long='truncate' or 'drop'"
    )
    with pytest.raises(DataError) as info:
        prepare_seq2seq_dataset(
            long, tokenizer, config(tmp_path, max_length=12, max_prompt_length=None, on_too_long="error")
        )
    assert str(info.value).startswith(
        "train row 0: chosen is longer than max_length=12 (the decoder's limit without max_completion_length) (1 such"
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_match_the_model_own_loss(tmp_path, tokenizers, arch):
    """The trainer's per-token log-probs are the decoder's: T5's own loss, BART's own logits."""
    tokenizer = tokenizers[arch]
    model = tiny_seq2seq_lm(tokenizer, arch).eval()
    trainer = ORPOTrainer(model=model, args=config(tmp_path), train_dataset=pairs(4), processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        scores = trainer.scorer(model, batch)
    mask = batch["labels"][:, 1:] != -100
    mean_logps = (scores.logps * mask).sum(-1) / mask.sum(-1)
    with torch.no_grad():
        for index in range(4):
            feature = trainer.train_dataset[index % 2]
            completion = feature["chosen_input_ids"] if index < 2 else feature["rejected_input_ids"]
            encoder = torch.tensor([feature["prompt_input_ids"]])
            if arch == "t5":  # T5 builds decoder inputs from labels itself: [pad] + labels[:-1]
                expected = -model(input_ids=encoder, labels=torch.tensor([completion])).loss
            else:
                prefix = list(decoder_prefix(model, tokenizer))
                decoder = torch.tensor([prefix + completion[:-1]])
                logits = model(input_ids=encoder, decoder_input_ids=decoder).logits[0, len(prefix) - 1 :]
                expected = selective_log_softmax(logits, torch.tensor(completion)).mean()
            assert torch.allclose(mean_logps[index], expected, atol=1e-5), (index, mean_logps[index], expected)


# ---- training ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_seq2seq_trains(tmp_path, tokenizers, arch):
    tokenizer = tokenizers[arch]
    model = tiny_seq2seq_lm(tokenizer, arch)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = config(tmp_path)
    assert args.is_encoder_decoder is None
    trainer = ORPOTrainer(model=model, args=args, train_dataset=pairs(), processing_class=tokenizer)
    assert trainer.model_kind.name == "seq2seq" and trainer.args.is_encoder_decoder is True
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 5 and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    for entry in trainer.state.log_history:
        if "loss" in entry:
            assert all(math.isfinite(entry[name]) for name in METRIC_NAMES)
    assert trainer.scorer.uses_fused is True  # the fused LM head is exact for T5 and BART
    assert any(
        not torch.equal(before[n], p)
        for n, p in model.named_parameters()
        if n.startswith("model.decoder") or n.startswith("decoder")
    )
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if "encoder" in n)


def test_fused_and_plain_paths_agree(tmp_path, tokenizers):
    tokenizer = tokenizers["t5"]
    first = []
    for fused in (True, False):
        trainer = ORPOTrainer(
            model=tiny_seq2seq_lm(tokenizer, "t5"),
            args=config(tmp_path, max_steps=2, fused_lm_head=fused),
            train_dataset=pairs(8),
            processing_class=tokenizer,
        )
        trainer.train()
        first.append([entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
    assert first[0] == pytest.approx(first[1], rel=1e-4)


def test_lora_eval_and_trainer_from_a_local_path(tmp_path, tokenizers, caplog):
    from peft import LoraConfig, TaskType

    tokenizer = tokenizers["bart"]
    source = tmp_path / "tiny-bart"
    tiny_seq2seq_lm(tokenizer, "bart").save_pretrained(source)
    tokenizer.save_pretrained(source)
    lora = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    args = config(tmp_path / "out", max_steps=3, is_encoder_decoder=True, nll_scope="prompt_and_completion")
    with caplog.at_level(logging.WARNING, logger="orpo.models.encoder_decoder"):
        trainer = ORPOTrainer(
            model=str(source), args=args, train_dataset=pairs(8), eval_dataset=pairs(4), peft_config=lora
        )
    assert "no prompt to score" in caplog.text
    assert type(trainer.model.get_base_model()).__name__ == "BartForConditionalGeneration"
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    assert moved and all("lora_" in name for name in moved)
    metrics = trainer.evaluate()
    assert all(math.isfinite(metrics[f"eval_{name}"]) for name in METRIC_NAMES)


def test_pretokenized_rows_pass_through(tmp_path, tokenizers):
    tokenizer = tokenizers["t5"]
    rows = [{"prompt_input_ids": [5, 6, 2], "chosen_input_ids": [7, 2], "rejected_input_ids": [8, 9, 2]}] * 4
    dataset, report = prepare_seq2seq_dataset(rows, tokenizer, config(tmp_path))
    assert dataset[0]["prompt_input_ids"] == [5, 6, 2] and report.tokenize is None
