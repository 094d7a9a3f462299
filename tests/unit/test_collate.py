"""The collator: chosen rows first, then rejected; labels only on completions; exact tensors."""

from __future__ import annotations

import pytest
import torch

from orpo.data import ORPODataCollator

PAD, IGN = 0, -100
PAIRS = [
    {"prompt_input_ids": [1, 10, 11], "chosen_input_ids": [20, 21, 4], "rejected_input_ids": [30, 4]},
    {"prompt_input_ids": [1, 12], "chosen_input_ids": [22, 4], "rejected_input_ids": [31, 32, 33, 4]},
]


def test_exact_tensors_for_two_pairs():
    batch = ORPODataCollator(pad_token_id=PAD)(PAIRS)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
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
    assert all(t.dtype == torch.long for t in batch.values())


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
