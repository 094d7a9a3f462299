"""Tokenization of (prompt, chosen, rejected): exact ids, BOS/EOS exactly once, length limits.

Expected ids are built from the pieces: ``enc(text)`` (no special tokens) plus the special ids,
which are fixed by the order of ``orpo.demo.tiny.SPECIAL_TOKENS`` (<pad> 0, <s> 1, </s> 2,
<|im_start|> 3, <|im_end|> 4).
"""

from __future__ import annotations

import datasets
import pytest

from conftest import CORPUS
from orpo.data import DataError, LengthLimits, PairTokenizer, TokenizeReport, tokenize_dataset
from orpo.data.tokenize import truncate_pair
from orpo.demo.tiny import build_tokenizer

PAD, BOS, EOS_S, IM_START, IM_END = 0, 1, 2, 3, 4


@pytest.fixture(scope="module")
def no_bos_tokenizer():
    """No BOS added by the tokenizer, EOS '</s>', no chat template."""
    return build_tokenizer(CORPUS, add_bos=False, eos_token="</s>", chat_template=None)


def enc(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def one(tokenizer, prompt, chosen, rejected, **limits):
    return PairTokenizer(tokenizer, LengthLimits(**limits)).one(prompt, chosen, rejected)


def test_special_ids_are_as_documented(tokenizer, no_bos_tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (PAD, BOS, IM_END)
    assert no_bos_tokenizer.eos_token_id == EOS_S
    assert tokenizer("hello")["input_ids"][0] == BOS  # this tokenizer adds BOS itself
    assert no_bos_tokenizer("hello")["input_ids"][0] != BOS


def test_exact_ids_of_plain_rows(tokenizer):
    rows = [
        ("What is the color of the sky?", " The sky is blue.", " The grass is green."),
        ("add two numbers: 2 + 3 =", " 5", " 8 wrong"),
    ]
    for prompt, chosen, rejected in rows:
        out = one(tokenizer, prompt, chosen, rejected)
        assert out["prompt_input_ids"] == [BOS, *enc(tokenizer, prompt)]
        assert out["chosen_input_ids"] == [*enc(tokenizer, chosen), IM_END]
        assert out["rejected_input_ids"] == [*enc(tokenizer, rejected), IM_END]
        assert out["tokenize_flags"] == 0
    # The pieces are real multi-token encodings, not trivially short.
    assert len(enc(tokenizer, rows[0][0])) > 5


def test_chat_template_bos_is_not_doubled(tokenizer):
    messages = [{"role": "user", "content": "hello world"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<s><|im_start|>user")  # the template writes BOS, the tokenizer would add another
    out = one(tokenizer, prompt, "yes<|im_end|>\n", "no<|im_end|>\n")
    body = enc(tokenizer, prompt)
    assert body[0] == BOS and body[1] == IM_START
    assert out["prompt_input_ids"] == body
    assert out["prompt_input_ids"].count(BOS) == 1
    # Several BOS at the start collapse to one too.
    out = one(tokenizer, "<s><s>hello", " yes", " no")
    assert out["prompt_input_ids"] == [BOS, *enc(tokenizer, "hello")]


def test_tokenizer_without_bos_gets_none(no_bos_tokenizer):
    out = one(no_bos_tokenizer, "hello world", " yes", " no")
    assert out["prompt_input_ids"] == enc(no_bos_tokenizer, "hello world")
    assert BOS not in out["prompt_input_ids"]
    assert out["chosen_input_ids"] == [*enc(no_bos_tokenizer, " yes"), EOS_S]


def test_eos_appended_exactly_once(tokenizer, no_bos_tokenizer):
    # Completion text already ending with the EOS token: not appended again.
    out = one(tokenizer, "hello", " yes<|im_end|>", " no")
    assert out["chosen_input_ids"] == [*enc(tokenizer, " yes"), IM_END]
    assert out["rejected_input_ids"] == [*enc(tokenizer, " no"), IM_END]
    out = one(no_bos_tokenizer, "hello", " yes</s>", " no</s>")
    assert out["chosen_input_ids"] == [*enc(no_bos_tokenizer, " yes"), EOS_S]
    assert out["rejected_input_ids"] == [*enc(no_bos_tokenizer, " no"), EOS_S]
    # A trailing newline that is not after an EOS is content: EOS comes after it.
    out = one(tokenizer, "hello", " yes\n", " no")
    assert out["chosen_input_ids"] == [*enc(tokenizer, " yes\n"), IM_END]


def test_chatml_end_of_turn_is_the_eos(tokenizer):
    """The template renders '<|im_end|>\\n' and EOS is '<|im_end|>': one EOS, the newline dropped."""
    messages = [{"role": "user", "content": "hello"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": "yes good"}], tokenize=False)
    chosen = full[len(prompt) :]
    assert chosen == "yes good<|im_end|>\n"
    out = one(tokenizer, prompt, chosen, "no bad<|im_end|>\n\n")
    assert out["chosen_input_ids"] == [*enc(tokenizer, "yes good"), IM_END]
    assert out["rejected_input_ids"] == [*enc(tokenizer, "no bad"), IM_END]
    assert out["chosen_input_ids"].count(IM_END) == 1


def test_other_eos_is_appended_after_the_end_of_turn(no_bos_tokenizer):
    # EOS is '</s>' while the text ends with '<|im_end|>\n' (e.g. a base model's EOS): append it.
    out = one(no_bos_tokenizer, "hi", "yes<|im_end|>\n", "no")
    assert out["chosen_input_ids"] == [*enc(no_bos_tokenizer, "yes<|im_end|>\n"), EOS_S]


def test_max_prompt_length_keep_end_and_keep_start(tokenizer):
    prompt = "What is the color of the sky? The grass is green."
    body = enc(tokenizer, prompt)
    assert len(body) > 8
    end = one(tokenizer, prompt, " yes", " no", max_prompt_length=5, truncation_mode="keep_end")
    # keep_end keeps the question's end, and the BOS stays first
    assert end["prompt_input_ids"] == [BOS, *body[-4:]]
    start = one(tokenizer, prompt, " yes", " no", max_prompt_length=5, truncation_mode="keep_start")
    assert start["prompt_input_ids"] == [BOS, *body[:4]]
    assert end["tokenize_flags"] == start["tokenize_flags"] == 1  # PROMPT_TRUNCATED
    assert end["chosen_input_ids"] == [*enc(tokenizer, " yes"), IM_END]


def test_max_prompt_length_without_bos(no_bos_tokenizer):
    prompt = "What is the color of the sky? The grass is green."
    body = enc(no_bos_tokenizer, prompt)
    assert one(no_bos_tokenizer, prompt, " yes", " no", max_prompt_length=5)["prompt_input_ids"] == body[-5:]
    kept = one(no_bos_tokenizer, prompt, " yes", " no", max_prompt_length=5, truncation_mode="keep_start")
    assert kept["prompt_input_ids"] == body[:5]


def test_max_completion_length_keeps_the_start(tokenizer):
    chosen, rejected = " The sky is blue. The grass is green.", " no"
    ids = [*enc(tokenizer, chosen), IM_END]
    out = one(tokenizer, "hello", chosen, rejected, max_completion_length=4)
    assert out["chosen_input_ids"] == ids[:4]  # cut: its EOS goes too
    assert out["rejected_input_ids"] == [*enc(tokenizer, rejected), IM_END]  # fits: untouched
    assert out["tokenize_flags"] == 2  # CHOSEN_TRUNCATED


def test_max_length_cuts_completions_to_what_the_prompt_leaves(tokenizer):
    prompt = "What is the color of the sky?"
    p = [BOS, *enc(tokenizer, prompt)]
    chosen, rejected = [*enc(tokenizer, " The sky is blue."), IM_END], [*enc(tokenizer, " The grass is green."), IM_END]
    max_length = len(p) + 3
    out = one(tokenizer, prompt, " The sky is blue.", " The grass is green.", max_length=max_length)
    assert out["prompt_input_ids"] == p
    assert out["chosen_input_ids"] == chosen[:3]
    assert out["rejected_input_ids"] == rejected[:3]
    assert out["tokenize_flags"] == 2 | 4
    # max_prompt_length first, then max_length on what is left
    out = one(tokenizer, prompt, " The sky is blue.", " no", max_length=6, max_prompt_length=4)
    assert out["prompt_input_ids"] == [BOS, *p[-3:]]
    assert out["chosen_input_ids"] == chosen[:2]
    assert out["rejected_input_ids"] == [*enc(tokenizer, " no"), IM_END][:2]


def test_truncate_pair_on_ranges_stays_bos_agnostic():
    # orpo.cli.inspect passes range objects and no BOS id: plain slicing.
    cut = truncate_pair(range(10), range(3), range(2), LengthLimits(8, 4, None, "keep_end"))
    assert list(cut[0]) == [6, 7, 8, 9] and list(cut[1]) == [0, 1, 2] and list(cut[2]) == [0, 1]


def _dataset(rows):
    return datasets.Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows])


LONG_PROMPT = "What is the color of the sky? The sky is blue. The grass is green. hello world"
ROWS = [
    ("hello", " yes", " no"),  # fits
    (LONG_PROMPT, " yes", " no"),  # the prompt alone fills max_length
    ("hello", " The sky is blue. The grass is green.", " no"),  # chosen over the limit
]


def test_pair_with_no_room_for_a_completion_is_dropped_and_counted(tokenizer):
    limits = LengthLimits(max_length=12, max_prompt_length=None)
    assert len([BOS, *enc(tokenizer, LONG_PROMPT)]) >= 12
    tokenized, report = tokenize_dataset(_dataset(ROWS), PairTokenizer(tokenizer, limits), on_too_long="truncate")
    assert isinstance(report, TokenizeReport)
    assert (report.rows_in, report.rows_out) == (3, 2)
    assert report.dropped_no_room_for_completion == 1 and report.dropped_rows == [1]
    assert report.chosen_truncated == 1 and report.dropped_too_long == 0
    assert list(tokenized["prompt"]) == ["hello", "hello"]  # text columns kept
    assert "tokenize_flags" not in tokenized.column_names
    prompts, chosens, rejecteds = (
        list(tokenized[k]) for k in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")
    )
    assert all(len(p) + max(len(c), len(r)) <= 12 for p, c, r in zip(prompts, chosens, rejecteds, strict=True))
    assert all(len(c) > 0 for c in chosens + rejecteds)
    assert "1 dropped" in report.summary()


def test_on_too_long_drop_and_error(tokenizer):
    limits = LengthLimits(max_length=12, max_prompt_length=None)
    pairs = PairTokenizer(tokenizer, limits)
    tokenized, report = tokenize_dataset(_dataset(ROWS), pairs, on_too_long="drop")
    assert report.rows_out == 1 and list(tokenized["chosen"]) == [" yes"]
    assert report.dropped_too_long == 1 and report.dropped_no_room_for_completion == 1
    assert sorted(report.dropped_rows) == [1, 2]
    with pytest.raises(DataError) as error:
        tokenize_dataset(_dataset(ROWS), pairs, on_too_long="error")
    assert str(error.value) == (
        "train row 1: the prompt fills max_length=12 and leaves no room for a completion (2 such row(s) in the train "
        "data); raise the limits, or set on_too_long='truncate' or 'drop'"
    )
    with pytest.raises(DataError) as error:
        tokenize_dataset(_dataset(ROWS[2:]), pairs, on_too_long="error")
    assert str(error.value) == (
        "train row 0: chosen does not fit (max_length=12, max_completion_length=None) (1 such row(s) in the train "
        "data); raise the limits, or set on_too_long='truncate' or 'drop'"
    )
    # Within the limits nothing is dropped whatever the policy.
    fine, report = tokenize_dataset(_dataset(ROWS[:1]), pairs, on_too_long="error")
    assert report.rows_out == 1 and list(fine["chosen_input_ids"]) == [[*enc(tokenizer, " yes"), IM_END]]


def test_tokenize_dataset_matches_pair_tokenizer(tokenizer):
    limits = LengthLimits(max_length=20, max_prompt_length=8, truncation_mode="keep_end")
    rows = [
        ("What is the color of the sky? The grass is green.", " yes sky", " no grass"),
        ("hi", " a", " b<|im_end|>\n"),
    ]
    tokenized, _ = tokenize_dataset(_dataset(rows), PairTokenizer(tokenizer, limits))
    for index, row in enumerate(rows):
        expected = one(tokenizer, *row, max_length=20, max_prompt_length=8)
        for key in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids"):
            assert tokenized[index][key] == expected[key]
