"""The collator: chosen rows first, then rejected; labels only on completions; exact tensors."""

from __future__ import annotations

import logging

import pytest
import torch

from orpo import ORPOConfig
from orpo.data import ORPODataCollator
from orpo.data.collate import choose_collator, choose_layout
from orpo.data.packing import ORPOPackingCollator, ORPOSharedPromptCollator
from orpo.layouts import LAYOUT_KEY, Layout, layout_of

PAD, IGN = 0, -100
PAIRS = [
    {"prompt_input_ids": [1, 10, 11], "chosen_input_ids": [20, 21, 4], "rejected_input_ids": [30, 4]},
    {"prompt_input_ids": [1, 12], "chosen_input_ids": [22, 4], "rejected_input_ids": [31, 32, 33, 4]},
]


def test_exact_tensors_for_two_pairs():
    batch = ORPODataCollator(pad_token_id=PAD)(PAIRS)
    assert set(batch) == {"input_ids", "attention_mask", "labels", LAYOUT_KEY}
    assert batch[LAYOUT_KEY] is Layout.PADDED
    expected_ids = [
        [1, 10, 11, 20, 21, 4],  # chosen 0
        [1, 12, 22, 4, PAD, PAD],  # chosen 1
        [1, 10, 11, 30, 4, PAD],  # rejected 0
        [1, 12, 31, 32, 33, 4],  # rejected 1
    ]
    expected_mask = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    expected_labels = [
        [IGN, IGN, IGN, 20, 21, 4],
        [IGN, IGN, 22, 4, IGN, IGN],
        [IGN, IGN, IGN, 30, 4, IGN],
        [IGN, IGN, 31, 32, 33, 4],
    ]
    assert batch["input_ids"].tolist() == expected_ids
    assert batch["attention_mask"].tolist() == expected_mask
    assert batch["labels"].tolist() == expected_labels
    assert all(batch[key].dtype == torch.long for key in ("input_ids", "attention_mask", "labels"))


def test_pad_to_multiple_of_and_custom_pad_values():
    batch = ORPODataCollator(pad_token_id=7, label_pad_token_id=-1, pad_to_multiple_of=4)(PAIRS)
    assert batch["input_ids"].shape == (4, 8)
    assert batch["input_ids"][0].tolist() == [1, 10, 11, 20, 21, 4, 7, 7]
    assert batch["attention_mask"][0].tolist() == [1] * 6 + [0, 0]
    assert batch["labels"][1].tolist() == [-1, -1, 22, 4, -1, -1, -1, -1]
    # Already a multiple: unchanged length.
    assert ORPODataCollator(pad_token_id=PAD, pad_to_multiple_of=3)(PAIRS)["input_ids"].shape == (4, 6)


def test_prompt_and_completion_nll_labels():
    batch = ORPODataCollator(pad_token_id=PAD, nll_scope="prompt_and_completion")(PAIRS)
    assert batch["nll_labels"].tolist() == [
        [IGN, 10, 11, 20, 21, 4],  # first token: nothing predicts it
        [IGN, 12, 22, 4, IGN, IGN],  # padding
        [IGN, 10, 11, 30, 4, IGN],
        [IGN, 12, 31, 32, 33, 4],
    ]
    # labels (the odds-ratio term's tokens) stay completion-only
    assert batch["labels"].tolist() == ORPODataCollator(pad_token_id=PAD)(PAIRS)["labels"].tolist()


def test_padding_with_a_real_token_id_is_still_masked():
    # pad == eos (tokenizers without a pad token): padding must not become a label
    batch = ORPODataCollator(pad_token_id=4, nll_scope="prompt_and_completion")(PAIRS)
    assert batch["labels"][1].tolist() == [IGN, IGN, 22, 4, IGN, IGN]
    assert batch["nll_labels"][1].tolist() == [IGN, 12, 22, 4, IGN, IGN]


def test_empty_batch_raises():
    with pytest.raises(ValueError, match="empty batch"):
        ORPODataCollator(pad_token_id=PAD)([])


# ---- the layout marker and the choice of collator ----------------------------------------------------


def test_every_causal_collator_marks_its_layout():
    for collator, layout in (
        (ORPODataCollator(pad_token_id=PAD), Layout.PADDED),
        (ORPOPackingCollator(pad_token_id=PAD), Layout.PACKED),
        (ORPOSharedPromptCollator(pad_token_id=PAD), Layout.SHARED_PROMPT),
    ):
        batch = collator(PAIRS)
        assert batch[LAYOUT_KEY] is layout and layout_of(batch) is layout


def test_a_batch_without_a_marker_is_padded_and_a_bad_marker_is_named():
    batch = ORPODataCollator(pad_token_id=PAD)(PAIRS)
    del batch[LAYOUT_KEY]  # e.g. a user's own collator
    assert layout_of(batch) is Layout.PADDED
    with pytest.raises(TypeError, match=r"batch\['orpo_layout'\] must be an orpo.layouts.Layout, not str"):
        layout_of({**batch, LAYOUT_KEY: "packed"})


def test_the_marker_survives_the_trainer_and_accelerate_device_moves(tmp_path):
    from accelerate.utils import send_to_device
    from transformers import Trainer, TrainingArguments

    batch = ORPOPackingCollator(pad_token_id=PAD)(PAIRS)
    moved = send_to_device(batch, torch.device("cpu"))
    assert moved[LAYOUT_KEY] is Layout.PACKED
    trainer = Trainer(model=torch.nn.Linear(1, 1), args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[]))
    prepared = trainer._prepare_inputs(moved)
    assert prepared[LAYOUT_KEY] is Layout.PACKED
    assert torch.equal(prepared["input_ids"], batch["input_ids"])


CHOICES = [  # (model kind, padding_free, shared_prompt) -> layout, the switches ignored with a warning
    ("causal", False, False, Layout.PADDED, None),
    ("causal", True, False, Layout.PACKED, None),
    ("causal", False, True, Layout.SHARED_PROMPT, None),
    ("causal", True, True, Layout.SHARED_PROMPT, None),  # shared_prompt overrides padding_free
    ("vision", False, False, Layout.PADDED, None),
    ("vision", True, False, Layout.PADDED, "padding_free is not supported for vision models"),
    ("vision", False, True, Layout.PADDED, "shared_prompt is not supported for vision models"),
    ("vision", True, True, Layout.PADDED, "padding_free and shared_prompt are not supported for vision models"),
    ("seq2seq", False, False, Layout.PADDED, None),
    ("seq2seq", True, False, Layout.PADDED, "padding_free is not supported for seq2seq models"),
    ("seq2seq", False, True, Layout.PADDED, "shared_prompt is not supported for seq2seq models"),
    ("seq2seq", True, True, Layout.PADDED, "padding_free and shared_prompt are not supported for seq2seq models"),
]


@pytest.mark.parametrize(("kind", "padding_free", "shared_prompt", "layout", "warning"), CHOICES)
def test_choose_layout_table(caplog, kind, padding_free, shared_prompt, layout, warning):
    with caplog.at_level(logging.WARNING, logger="orpo.data.collate"):
        assert choose_layout(kind, padding_free, shared_prompt) is layout
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ([f"{warning}; using padded batches"] if warning else [])


@pytest.mark.parametrize(
    ("padding_free", "shared_prompt", "expected"),
    [
        (False, False, ORPODataCollator),
        (True, False, ORPOPackingCollator),
        (False, True, ORPOSharedPromptCollator),
        (True, True, ORPOSharedPromptCollator),
    ],
)
def test_choose_collator_for_causal_models(tmp_path, padding_free, shared_prompt, expected):
    args = ORPOConfig(
        output_dir=str(tmp_path),
        report_to=[],
        padding_free=padding_free,
        shared_prompt=shared_prompt,
        pad_to_multiple_of=4,
        label_pad_token_id=-1,
        nll_scope="prompt_and_completion",
    )
    collator = choose_collator("causal", args, _Tokenizer(), _Tokenizer())
    assert type(collator) is expected
    assert (collator.pad_token_id, collator.label_pad_token_id, collator.pad_to_multiple_of) == (9, -1, 4)
    assert collator.nll_scope == "prompt_and_completion"
    padding_value = ORPOConfig(output_dir=str(tmp_path), report_to=[], padding_value=3)
    assert choose_collator("causal", padding_value, _Tokenizer(), _Tokenizer()).pad_token_id == 3


class _Tokenizer:
    pad_token_id = 9


def test_choose_collator_for_seq2seq_and_vision_models(tmp_path, caplog):
    from orpo.seq2seq import Seq2SeqORPODataCollator
    from orpo.testing import build_seq2seq_tokenizer, build_vlm_processor, tiny_seq2seq_lm
    from orpo.vision import VisionORPODataCollator

    args = ORPOConfig(output_dir=str(tmp_path), report_to=[], padding_free=True)
    tokenizer = build_seq2seq_tokenizer(["hello world yes no"] * 4, "bart")
    with caplog.at_level(logging.WARNING, logger="orpo.data.collate"):
        seq2seq = choose_collator("seq2seq", args, tokenizer, tokenizer, tiny_seq2seq_lm(tokenizer, "bart"))
    assert type(seq2seq) is Seq2SeqORPODataCollator
    assert seq2seq.decoder_prefix == (tokenizer.eos_token_id, tokenizer.bos_token_id)
    processor = build_vlm_processor(["What color is it? red blue yes no"] * 4)
    with caplog.at_level(logging.WARNING, logger="orpo.data.collate"):
        vision = choose_collator("vision", args, processor, processor.tokenizer)
    assert type(vision) is VisionORPODataCollator and vision.processor is processor
    assert [record.getMessage() for record in caplog.records] == [
        "padding_free is not supported for seq2seq models; using padded batches",
        "padding_free is not supported for vision models; using padded batches",
    ]
