"""The collator: chosen rows first, then rejected; labels only on completions; exact tensors."""

from __future__ import annotations

import logging

import pytest
import torch

from orpo import ORPOConfig
from orpo.models.kinds import CAUSAL, ENCODER_DECODER, KINDS, VISION
from orpo.scoring.collate import ORPODataCollator
from orpo.scoring.layouts import LAYOUT_KEY, Layout, layout_of
from orpo.scoring.packing import ORPOPaddingFreeCollator, ORPOSharedPromptCollator
from orpo.scoring.routing import choose_layout

PAD, IGN = 0, -100
PAIRS = [
    {"prompt_input_ids": [1, 10, 11], "chosen_input_ids": [20, 21, 4], "rejected_input_ids": [30, 4]},
    {"prompt_input_ids": [1, 12], "chosen_input_ids": [22, 4], "rejected_input_ids": [31, 32, 33, 4]},
]


def test_exact_tensors_for_two_pairs():
    batch = ORPODataCollator(pad_token_id=PAD)(PAIRS)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "score_index", LAYOUT_KEY}
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
    # the scored positions of labels[:, 1:] (5 wide), row-major: what scoring gathers instead of masking
    assert batch["score_index"].tolist() == [2, 3, 4, 6, 7, 12, 13, 16, 17, 18, 19]
    assert all(batch[key].dtype == torch.long for key in ("input_ids", "attention_mask", "labels", "score_index"))


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
        (ORPOPaddingFreeCollator(pad_token_id=PAD), Layout.PADDING_FREE),
        (ORPOSharedPromptCollator(pad_token_id=PAD), Layout.SHARED_PROMPT),
    ):
        batch = collator(PAIRS)
        assert batch[LAYOUT_KEY] is layout and layout_of(batch) is layout


def test_a_batch_without_a_marker_is_padded_and_a_bad_marker_is_named():
    batch = ORPODataCollator(pad_token_id=PAD)(PAIRS)
    del batch[LAYOUT_KEY]  # e.g. a user's own collator
    assert layout_of(batch) is Layout.PADDED
    with pytest.raises(TypeError, match=r"batch\['orpo_layout'\] must be an orpo.scoring.layouts.Layout, not str"):
        layout_of({**batch, LAYOUT_KEY: "packed"})


def test_the_marker_and_segments_survive_the_trainer_and_accelerate_device_moves(tmp_path):
    from accelerate.utils import send_to_device
    from transformers import Trainer, TrainingArguments

    from orpo.scoring.layouts import SEGMENTS_KEY

    for collator, layout in (
        (ORPOPaddingFreeCollator(pad_token_id=PAD), Layout.PADDING_FREE),
        (ORPOSharedPromptCollator(pad_token_id=PAD), Layout.SHARED_PROMPT),
    ):
        batch = collator(PAIRS)
        moved = send_to_device(batch, torch.device("cpu"))
        trainer = Trainer(
            model=torch.nn.Linear(1, 1), args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[])
        )
        prepared = trainer._prepare_inputs(moved)
        assert prepared[LAYOUT_KEY] is layout
        assert prepared[SEGMENTS_KEY] is batch[SEGMENTS_KEY]  # on its device already: the same object
        assert prepared[SEGMENTS_KEY].layout is layout
        assert torch.equal(prepared["input_ids"], batch["input_ids"])
        pinned = batch[SEGMENTS_KEY].pin_memory() if torch.cuda.is_available() else batch[SEGMENTS_KEY]
        assert pinned.calls == batch[SEGMENTS_KEY].calls


def _config(tmp_path, **fields):
    return ORPOConfig(output_dir=str(tmp_path), report_to=[], **fields)


REQUESTS = [  # (layout, padding_free, shared_prompt) -> the one layout asked for
    ("auto", False, False, "auto"),
    ("auto", True, False, "padding_free"),
    ("auto", False, True, "shared_prompt"),
    ("auto", True, True, "shared_prompt"),  # a shared-prompt row is padding-free too
    ("padded", False, False, "padded"),
    ("padding_free", True, False, "padding_free"),
    ("shared_prompt", True, True, "shared_prompt"),
]


@pytest.mark.parametrize(("layout", "padding_free", "shared_prompt", "requested"), REQUESTS)
def test_the_requested_layout(tmp_path, layout, padding_free, shared_prompt, requested):
    args = _config(tmp_path, layout=layout, padding_free=padding_free, shared_prompt=shared_prompt)
    assert args.requested_layout() == requested
    assert (args.layout, args.padding_free, args.shared_prompt) == (layout, padding_free, shared_prompt)


@pytest.mark.parametrize(
    ("fields", "switches"),
    [
        ({"layout": "padded", "padding_free": True}, "ORPOConfig.padding_free=True"),
        ({"layout": "padded", "shared_prompt": True}, "ORPOConfig.shared_prompt=True"),
        ({"layout": "padding_free", "shared_prompt": True}, "ORPOConfig.shared_prompt=True"),
        (
            {"layout": "padded", "shared_prompt": True, "padding_free": True},
            "ORPOConfig.shared_prompt=True and ORPOConfig.padding_free=True",
        ),
    ],
)
def test_contradicting_layout_options_are_one_usage_error(tmp_path, fields, switches):
    from orpo.config.usage import UsageError

    with pytest.raises(UsageError) as caught:
        _config(tmp_path, **fields)
    assert str(caught.value) == (
        f"ORPOConfig.layout={fields['layout']!r} contradicts {switches}: set layout alone "
        "(one of auto, padded, padding_free, shared_prompt) or leave it 'auto'"
    )


def test_an_unknown_layout_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"ORPOConfig.layout='packed' is not one of auto, padded, padding_free"):
        _config(tmp_path, layout="packed")


def _tiny(tokenizer, attn):
    from orpo.demo.tiny import tiny_causal_lm

    return tiny_causal_lm(tokenizer, attn_implementation=attn)


CHOICES = [  # (attn_implementation, requested) -> layout, implementation, reason
    ("sdpa", "auto", Layout.SHARED_PROMPT, "orpo_sdpa", "auto: attention orpo_sdpa runs it"),
    ("eager", "auto", Layout.SHARED_PROMPT, "orpo_eager", "auto: attention orpo_eager runs it"),
    ("sdpa", "padding_free", Layout.PADDING_FREE, "orpo_sdpa", "requested: attention orpo_sdpa runs it"),
    ("eager", "shared_prompt", Layout.SHARED_PROMPT, "orpo_eager", "requested: attention orpo_eager runs it"),
    ("sdpa", "padded", Layout.PADDED, None, "requested"),
    (
        "flex_attention",
        "auto",
        Layout.PADDED,
        None,
        "auto: no per-segment attention for this model (shared_prompt: flex attention has no backward on CPU; "
        "padding_free: flex attention has no backward on CPU)",
    ),
]


@pytest.mark.parametrize(("attn", "requested", "layout", "implementation", "reason"), CHOICES)
def test_choose_layout_logs_one_line(tokenizer, caplog, attn, requested, layout, implementation, reason):
    model = _tiny(tokenizer, attn)
    with caplog.at_level(logging.INFO, logger="orpo.scoring.routing"):
        choice = choose_layout(requested, model)
        choice.log()
    assert choice == (layout, implementation, reason, None)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, f"layout: {layout.value} ({reason})")
    ]
    assert model.config._attn_implementation == attn  # choosing switches nothing; apply() does
    assert choice.apply(model) is model
    assert model.config._attn_implementation == (implementation or attn)


def test_a_requested_layout_that_cannot_run_is_padded_with_a_warning(tokenizer, caplog):
    with caplog.at_level(logging.INFO, logger="orpo.scoring.routing"):
        choice = choose_layout("shared_prompt", _tiny(tokenizer, "flex_attention"))
        choice.log()
    assert choice == (Layout.PADDED, None, "flex attention has no backward on CPU", Layout.SHARED_PROMPT)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            "layout shared_prompt cannot run here (flex attention has no backward on CPU); using padded batches",
        )
    ]


@pytest.mark.parametrize("kind", [VISION, ENCODER_DECODER])
@pytest.mark.parametrize("requested", ["auto", "padded", "padding_free", "shared_prompt"])
def test_vision_and_seq2seq_models_take_padded_batches(tokenizer, caplog, kind, requested):
    with caplog.at_level(logging.INFO, logger="orpo.scoring.routing"):
        choice = choose_layout(requested, _tiny(tokenizer, "sdpa"), kind.padded_only)
        choice.log()
    reason = kind.padded_only if requested != "padded" else "requested"
    refused = None if requested in ("auto", "padded") else Layout(requested)
    assert choice == (Layout.PADDED, None, reason, refused)
    expected = (
        (logging.INFO, f"layout: padded ({reason})")
        if refused is None
        else (logging.WARNING, f"layout {requested} cannot run here ({reason}); using padded batches")
    )
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [expected]
    assert kind.layouts == (Layout.PADDED,)
    with pytest.raises(ValueError, match=f"{kind.name} models take padded batches, not padding_free"):
        kind.collator(None, None, None, None, Layout.PADDING_FREE)


def test_every_kind_is_named_once():
    assert KINDS == {"causal": CAUSAL, "vision": VISION, "seq2seq": ENCODER_DECODER}
    assert CAUSAL.layouts == (Layout.PADDED, Layout.PADDING_FREE, Layout.SHARED_PROMPT)


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (Layout.PADDED, ORPODataCollator),
        (Layout.PADDING_FREE, ORPOPaddingFreeCollator),
        (Layout.SHARED_PROMPT, ORPOSharedPromptCollator),
    ],
)
def test_choose_collator_for_causal_models(tmp_path, layout, expected):
    args = _config(tmp_path, pad_to_multiple_of=4, label_pad_token_id=-1, nll_scope="prompt_and_completion")
    collator = CAUSAL.collator(args, _Tokenizer(), _Tokenizer(), None, layout)
    assert type(collator) is expected
    assert (collator.pad_token_id, collator.label_pad_token_id, collator.pad_to_multiple_of) == (9, -1, 4)
    assert collator.nll_scope == "prompt_and_completion"
    padding_value = _config(tmp_path, padding_value=3)
    assert CAUSAL.collator(padding_value, _Tokenizer(), _Tokenizer(), None).pad_token_id == 3


class _Tokenizer:
    pad_token_id = 9


def test_choose_collator_for_seq2seq_and_vision_models(tmp_path):
    from orpo.demo.tiny import build_seq2seq_tokenizer, build_vlm_processor, tiny_seq2seq_lm
    from orpo.models.encoder_decoder import Seq2SeqORPODataCollator
    from orpo.models.vision import VisionORPODataCollator

    args = _config(tmp_path)
    tokenizer = build_seq2seq_tokenizer(["hello world yes no"] * 4, "bart")
    seq2seq = ENCODER_DECODER.collator(args, tokenizer, tokenizer, tiny_seq2seq_lm(tokenizer, "bart"))
    assert type(seq2seq) is Seq2SeqORPODataCollator
    assert seq2seq.decoder_prefix == (tokenizer.eos_token_id, tokenizer.bos_token_id)
    processor = build_vlm_processor(["What color is it? red blue yes no"] * 4)
    vision = VISION.collator(args, processor, processor.tokenizer, None)
    assert type(vision) is VisionORPODataCollator and vision.processor is processor


def test_where_batches_are_split_by_rows_they_are_padded(tokenizer, caplog):
    reason = "streamed training data: accelerate splits its batches by rows"
    with caplog.at_level(logging.INFO, logger="orpo.scoring.routing"):
        choice = choose_layout("auto", _tiny(tokenizer, "sdpa"), padded_only=reason)
        assert choice == (Layout.PADDED, None, reason, None)
        choice.log()
        choose_layout("shared_prompt", _tiny(tokenizer, "sdpa"), padded_only=reason).log()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, f"layout: padded ({reason})"),
        (logging.WARNING, f"layout shared_prompt cannot run here ({reason}); using padded batches"),
    ]


def test_a_streamed_trainer_collates_padded(tokenizer, tmp_path, caplog):
    import datasets

    from orpo import ORPOTrainer

    rows = [{"prompt": f"q{i}?", "chosen": " yes", "rejected": " no"} for i in range(8)]
    stream = datasets.Dataset.from_list(rows).to_iterable_dataset()
    with caplog.at_level(logging.INFO, logger="orpo.scoring.routing"):
        trainer = ORPOTrainer(
            model=_tiny(tokenizer, "sdpa"),
            args=_config(tmp_path, max_steps=1, use_cpu=True),
            train_dataset=stream,
            processing_class=tokenizer,
        )
    assert type(trainer.data_collator) is ORPODataCollator
    assert trainer.layout_choice == (
        Layout.PADDED,
        None,
        "streamed training data: accelerate splits its batches by rows",
        None,
    )
