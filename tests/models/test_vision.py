"""Vision-language data: image loading, placeholders, label masks, errors (no training here)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from orpo import ORPOConfig
from orpo.data import DataError
from orpo.demo.tiny import build_vlm_processor, make_image, tiny_causal_lm, tiny_vlm
from orpo.models.vision import (
    VisionORPODataCollator,
    find_vision_tower,
    freeze_vision_tower,
    load_image,
    load_images,
    placeholder_token_ids,
    prepare_vision_dataset,
    with_image_parts,
)
from orpo.scoring.layouts import LAYOUT_KEY, Layout

CORPUS = ["What color is the image? red blue green yes no idea a square"] * 10
RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture(scope="module", params=["qwen2_vl", "llava"])
def processor(request):
    return build_vlm_processor(CORPUS, request.param)


@pytest.fixture(scope="module")
def qwen():
    return build_vlm_processor(CORPUS, "qwen2_vl")


def args(tmp_path, **overrides):
    return ORPOConfig(output_dir=str(tmp_path), report_to=[], **overrides)


def rows(n=2, **extra):
    out = []
    for i in range(n):
        color = RED if i % 2 == 0 else BLUE
        name = "red" if i % 2 == 0 else "blue"
        out.append(
            {
                "prompt": "What color is it?",
                "chosen": f" {name}",
                "rejected": " no idea",
                "images": [make_image((20, 24), color)],
                **extra,
            }
        )
    return out


def expected_image_tokens(processor, image):
    pixels = processor.image_processor(images=[image])  # not processor(): it needs text at transformers 5.3-5.5
    if "image_grid_thw" in pixels:
        return int(np.prod(pixels["image_grid_thw"][0])) // processor.image_processor.merge_size**2
    return 16  # llava style: (16 / 4)^2 patches, + CLS - CLS ("default" feature selection)


# ---- images ------------------------------------------------------------------------------------


def test_load_image_accepts_paths_pil_bytes_dicts_arrays(tmp_path):
    path = tmp_path / "a.png"
    image = make_image((10, 12), RED, path=str(path))
    data = path.read_bytes()
    for value in (
        str(path),
        path,
        image,
        data,
        {"bytes": data, "path": None},
        {"bytes": None, "path": str(path)},
        np.asarray(image),
        image.convert("L"),
        image.convert("RGBA"),
    ):
        loaded, key = load_image(value, "train row 0, column 'images'")
        assert loaded.mode == "RGB" and loaded.size == (10, 12) and key
    images, keys = load_images([str(path), image], "where")
    assert len(images) == 2 and len(keys) == 2
    assert load_images(None, "where") == ([], [])


def test_missing_and_unreadable_images_name_the_row_and_path(tmp_path):
    with pytest.raises(DataError, match=r"train row 3, column 'images': image file '.*nope\.png' not found"):
        load_image(str(tmp_path / "nope.png"), "train row 3, column 'images'")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(
        DataError, match=r"train row 1, column 'images', image 1: image '.*bad\.png' is not a readable image"
    ):
        load_images([make_image(), str(bad)], "train row 1, column 'images'")
    with pytest.raises(DataError, match=r"^train row 0: image <bytes> is not a readable image"):
        load_image(b"\x89PNG garbage", "train row 0")
    with pytest.raises(DataError, match=r"^train row 0: image 'https://example.com/cat.png' is a URL"):
        load_image("https://example.com/cat.png", "train row 0")
    with pytest.raises(DataError, match=r"^train row 0: unsupported image value int"):
        load_image(5, "train row 0")


def test_dataset_errors_name_the_row_and_file(tmp_path, qwen):
    data = rows(3)
    data[2]["images"] = [str(tmp_path / "missing.png")]
    with pytest.raises(DataError, match=r"^train row 2, column 'images': image file '.*missing\.png' not found"):
        prepare_vision_dataset(data, qwen, args(tmp_path))
    truncated = io.BytesIO()
    make_image((32, 32)).save(truncated, format="PNG")
    data[2]["images"] = [truncated.getvalue()[:40]]  # a cut-off PNG
    with pytest.raises(DataError, match=r"^train row 2, column 'images': image <bytes> is not a readable image"):
        prepare_vision_dataset(data, qwen, args(tmp_path))


def test_with_image_parts_goes_into_the_first_user_turn():
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    out = with_image_parts(messages, 2)
    assert out[1]["content"] == [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "hi"}]
    assert messages[1]["content"] == "hi"  # not modified in place
    placed = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}]
    assert with_image_parts(placed, 1) is placed
    assert with_image_parts(messages, 0) is messages


# ---- preparation and batching -------------------------------------------------------------------


def test_labels_score_the_completion_only(tmp_path, processor):
    """Prompt, image placeholders and padding are -100; the completion ends with exactly one EOS."""
    dataset, report = prepare_vision_dataset(rows(2), processor, args(tmp_path))
    assert report.rows_out == 2
    tokenizer = processor.tokenizer
    placeholders = placeholder_token_ids(processor)
    assert placeholders and all(p not in (tokenizer.eos_token_id, tokenizer.pad_token_id) for p in placeholders)
    collator = VisionORPODataCollator.from_args(processor, args(tmp_path))
    features = [dataset[0], dataset[1]]
    batch = collator(features)
    assert batch["input_ids"].shape[0] == 4 and "pixel_values" in batch
    assert batch[LAYOUT_KEY] is Layout.PADDED
    for row in range(4):
        feature = features[row % 2]
        completion = feature["chosen_input_ids"] if row < 2 else feature["rejected_input_ids"]
        prompt = feature["prompt_input_ids"]
        expected = [-100] * len(prompt) + list(completion)
        expected += [-100] * (batch["labels"].shape[1] - len(expected))
        assert batch["labels"][row].tolist() == expected
        assert completion[-1] == tokenizer.eos_token_id and completion.count(tokenizer.eos_token_id) == 1
        n_placeholders = sum(t in placeholders for t in prompt)
        assert n_placeholders == expected_image_tokens(processor, make_image((20, 24)))
        assert prompt.count(tokenizer.bos_token_id) == 1
    is_placeholder = torch.isin(batch["input_ids"], torch.tensor(placeholders))
    assert (batch["labels"][is_placeholder] == -100).all()
    assert tokenizer.decode(features[0]["chosen_input_ids"]) == " red<|im_end|>"
    if "mm_token_type_ids" in batch:  # Qwen2-VL's M-RoPE needs it
        assert (batch["mm_token_type_ids"].bool() == is_placeholder).all()


def test_pixels_follow_the_row_layout(tmp_path, qwen):
    """Chosen rows then rejected rows: each pair's images appear twice, in placeholder order."""
    data = rows(2)
    data[1]["images"] = [make_image((20, 24), BLUE), make_image((32, 16), RED)]
    dataset, _ = prepare_vision_dataset(data, qwen, args(tmp_path))
    batch = VisionORPODataCollator.from_args(qwen, args(tmp_path))([dataset[0], dataset[1]])
    grids = batch["image_grid_thw"].tolist()
    assert len(grids) == 6 and grids[:3] == grids[3:]
    merge = qwen.image_processor.merge_size**2
    per_row = (batch["input_ids"] == qwen.image_token_id).sum(-1).tolist()
    assert per_row[0] == grids[0][0] * grids[0][1] * grids[0][2] // merge
    assert per_row[1] == sum(g[0] * g[1] * g[2] for g in grids[1:3]) // merge
    assert batch["pixel_values"].shape[0] == sum(g[0] * g[1] * g[2] for g in grids)


def test_nll_scope_prompt_and_completion_never_scores_placeholders(tmp_path, processor):
    config = args(tmp_path, nll_scope="prompt_and_completion")
    dataset, _ = prepare_vision_dataset(rows(2), processor, config)
    batch = VisionORPODataCollator.from_args(processor, config)([dataset[0], dataset[1]])
    is_placeholder = torch.isin(batch["input_ids"], torch.tensor(placeholder_token_ids(processor)))
    assert (batch["nll_labels"][is_placeholder] == -100).all()
    scored_prompt = (batch["nll_labels"] != -100) & (batch["labels"] == -100)
    assert scored_prompt.any()  # the prompt's text is scored


def test_formats_strings_messages_raw_placeholder_and_implicit(tmp_path, qwen):
    image = make_image()
    user = [{"role": "user", "content": "What color is it?"}]
    data = [
        {"prompt": "What color is it?", "chosen": " red", "rejected": " blue", "images": [image]},
        {
            "prompt": user,
            "chosen": [{"role": "assistant", "content": "red"}],
            "rejected": [{"role": "assistant", "content": "blue"}],
            "images": [image],
        },
        {
            "prompt": [{"role": "user", "content": [{"type": "text", "text": "What color?"}, {"type": "image"}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "blue"}]}],
            "images": [image],
        },
        {
            "chosen": [*user, {"role": "assistant", "content": "red"}],
            "rejected": [*user, {"role": "assistant", "content": "blue"}],
            "images": [image],
        },
    ]
    prepared = [prepare_vision_dataset([row], qwen, args(tmp_path))[0][0] for row in data]
    for row in prepared:
        assert row["prompt"].count("<|image_pad|>") == 1 and row["prompt"].startswith("<s><|im_start|>user\n")
    assert prepared[0]["prompt"] == prepared[1]["prompt"] and prepared[0]["chosen"] == " red<|im_end|>\n"
    assert prepared[2]["prompt"].index("What color?") < prepared[2]["prompt"].index("<|vision_start|>")
    assert prepared[3]["prompt"] == prepared[1]["prompt"] and prepared[3]["chosen"] == prepared[1]["chosen"]
    raw, _ = prepare_vision_dataset(
        [
            {
                "prompt": "<|vision_start|><|image_pad|><|vision_end|>Color?",
                "chosen": " red",
                "rejected": " blue",
                "images": image,
            }
        ],
        qwen,
        args(tmp_path),
    )
    assert raw[0]["prompt"].startswith("<|vision_start|>") and raw[0]["chosen"] == " red"


def test_image_count_must_match_the_placeholders(tmp_path, qwen):
    two = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which?"}]}]
    data = [{"prompt": two, "chosen": "red", "rejected": "blue", "images": [make_image()]}]
    with pytest.raises(DataError) as info:
        prepare_vision_dataset(data, qwen, args(tmp_path))
    assert str(info.value) == (
        "train row 0: the prompt has 2 image placeholder(s) ('<|image_pad|>') but the row has 1 image(s) in column "
        "'images'"
    )
    data = [{"prompt": "Which?", "chosen": "<|image_pad|> red", "rejected": "blue", "images": [make_image()]}]
    with pytest.raises(DataError) as info:
        prepare_vision_dataset(data, qwen, args(tmp_path))
    assert str(info.value) == (
        "train row 0, column 'chosen': a completion cannot contain the image placeholder '<|image_pad|>'"
    )


def test_image_column_alias_datasets_image_feature_and_no_images(tmp_path, qwen):
    import datasets

    data = rows(2)
    for row in data:
        row["image"] = row.pop("images")[0]
    dataset, _ = prepare_vision_dataset(data, qwen, args(tmp_path))
    assert "images" in dataset.column_names and "image" not in dataset.column_names
    batch = VisionORPODataCollator.from_args(qwen, args(tmp_path))([dataset[0], dataset[1]])
    assert batch["image_grid_thw"].shape[0] == 4
    paths = []
    for i, color in enumerate((RED, BLUE)):
        path = tmp_path / f"{i}.png"
        make_image((20, 24), color, path=str(path))
        paths.append(str(path))
    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "chosen": datasets.Value("string"),
            "rejected": datasets.Value("string"),
            "images": datasets.Sequence(datasets.Image()),
        }
    )
    hf = datasets.Dataset.from_dict(
        {
            "prompt": ["Color?"] * 2,
            "chosen": [" red", " blue"],
            "rejected": [" no", " no"],
            "images": [[p] for p in paths],
        },
        features=features,
    )
    dataset, _ = prepare_vision_dataset(hf, qwen, args(tmp_path))
    batch = VisionORPODataCollator.from_args(qwen, args(tmp_path))([dataset[0], dataset[1]])
    assert batch["image_grid_thw"].shape[0] == 4
    text_only, _ = prepare_vision_dataset([{"prompt": "Hi", "chosen": " yes", "rejected": " no"}], qwen, args(tmp_path))
    batch = VisionORPODataCollator.from_args(qwen, args(tmp_path))([text_only[0]])
    assert "pixel_values" not in batch and (batch["input_ids"] != qwen.image_token_id).all()


def test_duplicates_compare_images_too(tmp_path, qwen):
    data = rows(3)
    data[2] = dict(data[0])
    data[1] = {**data[0], "images": [make_image((20, 24), BLUE)]}  # same text, other image: not a duplicate
    _, report = prepare_vision_dataset(data, qwen, args(tmp_path, on_duplicate="drop"))
    assert report.duplicates == 1 and report.rows_out == 2


def test_prompt_truncation_never_cuts_image_tokens(tmp_path, qwen):
    data = rows(2)
    data[1]["prompt"] = "What color is it? " * 8
    fits = len(prepare_vision_dataset(data[:1], qwen, args(tmp_path))[0][0]["prompt_input_ids"])
    config = args(tmp_path, max_prompt_length=fits, max_length=fits + 20)
    _, report = prepare_vision_dataset(data, qwen, config)
    assert report.rows_out == 1 and report.tokenize.dropped_image_truncated == 1
    assert "cut image tokens" in report.summary()
    with pytest.raises(DataError) as info:
        prepare_vision_dataset(
            data, qwen, args(tmp_path, max_prompt_length=fits, max_length=fits + 20, on_too_long="error")
        )
    assert str(info.value) == (
        f"train row 1: the prompt (with its image tokens) does not fit max_prompt_length={fits} / "
        f"max_length={fits + 20} without cutting an image or the whole completion (1 such row(s) in the train data); "
        "raise the limits, or set on_too_long='truncate' or 'drop'"
    )
    # truncation that keeps every image token is allowed (keep_start cuts the prompt's end)
    kept, report = prepare_vision_dataset(
        data, qwen, args(tmp_path, max_prompt_length=fits, max_length=fits + 20, truncation_mode="keep_start")
    )
    assert report.rows_out == 2 and report.tokenize.prompt_truncated == 1
    assert len(kept[1]["prompt_input_ids"]) == fits


def test_a_plain_tokenizer_is_refused(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="needs the model's processor"):
        prepare_vision_dataset(rows(1), tokenizer, args(tmp_path))


# ---- the vision tower ----------------------------------------------------------------------------


def test_freeze_vision_tower(processor, tokenizer):
    style = "qwen2_vl" if "Qwen2VL" in type(processor).__name__ else "llava"
    model = tiny_vlm(processor, style)
    name, tower = find_vision_tower(model)
    assert name in ("model.visual", "model.vision_tower")
    frozen = freeze_vision_tower(model)
    assert frozen == sum(p.numel() for p in tower.parameters()) > 0
    assert not any(p.requires_grad for p in tower.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith(name + "."))
    with pytest.raises(ValueError, match="has no vision tower"):
        freeze_vision_tower(tiny_causal_lm(tokenizer))


def test_model_kind(processor, tokenizer):
    from orpo.demo.tiny import build_seq2seq_tokenizer, tiny_seq2seq_lm
    from orpo.models.kinds import kind_of
    from orpo.models.vision.placeholders import is_vision_processor

    style = "qwen2_vl" if "Qwen2VL" in type(processor).__name__ else "llava"
    vlm = tiny_vlm(processor, style)
    assert kind_of(vlm, processor).name == "vision" and kind_of(vlm.config).name == "vision"
    assert kind_of(None, processor).name == "vision"  # model_init: told by the processor
    assert kind_of(None, tokenizer).name == "causal"
    assert kind_of(tiny_causal_lm(tokenizer), processor).name == "causal"  # a model's config outranks the processor
    assert kind_of(tiny_causal_lm(tokenizer), tokenizer).name == "causal"
    assert is_vision_processor(processor) and not is_vision_processor(tokenizer)
    t5 = tiny_seq2seq_lm(build_seq2seq_tokenizer(CORPUS, "t5"), "t5")
    assert kind_of(t5, tokenizer).name == "seq2seq" and kind_of(t5.config).name == "seq2seq"
    assert kind_of(t5, tokenizer, is_encoder_decoder_flag=False).name == "causal"  # the config field wins
    assert kind_of(None, tokenizer, is_encoder_decoder_flag=True).name == "seq2seq"
