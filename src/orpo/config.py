"""``ORPOConfig``: the single source of truth for the Python API, CLI flags and YAML keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

TRUNCATION_MODES = ("keep_end", "keep_start")
NLL_SCOPES = ("completion", "prompt_and_completion")
ROW_POLICIES = ("error", "drop", "keep")
LENGTH_POLICIES = ("error", "drop", "truncate")
NONFINITE_POLICIES = ("error", "skip")


def _choice(help_text: str, choices: tuple[str, ...]) -> dict[str, Any]:
    return {"help": help_text, "choices": list(choices)}


@dataclass
class ORPOConfig(TrainingArguments):
    """Training arguments for :class:`orpo.ORPOTrainer`.

    Field names and defaults of TRL's ``ORPOConfig`` are kept so scripts port by changing the
    import; fields below the TRL block are ours.  Every field is also a ``orpo train`` flag
    and a YAML key.
    """

    # ---- TRL-compatible fields ---------------------------------------------------------
    beta: float = field(
        default=0.1,
        metadata={"help": "Weight of the odds-ratio term (lambda in the ORPO paper): loss = NLL + beta * L_OR."},
    )
    max_length: int | None = field(
        default=1024, metadata={"help": "Max tokens of prompt + completion per sequence (None: no limit)."}
    )
    max_prompt_length: int | None = field(
        default=512, metadata={"help": "Max prompt tokens, truncated by `truncation_mode` (None: no limit)."}
    )
    max_completion_length: int | None = field(
        default=None, metadata={"help": "Max tokens of each completion, cut from the end (None: no limit)."}
    )
    truncation_mode: str = field(
        default="keep_end",
        metadata=_choice(
            "Which part of an over-long prompt to keep: its end (the question) or its start.", TRUNCATION_MODES
        ),
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Set every dropout probability of the model to 0."})
    label_pad_token_id: int = field(default=-100, metadata={"help": "Label value of tokens that carry no loss."})
    padding_value: int | None = field(
        default=None, metadata={"help": "Token id used to pad input_ids (default: the tokenizer's pad_token_id)."}
    )
    generate_during_eval: bool = field(
        default=False,
        metadata={
            "help": "After each evaluation, generate for a few eval prompts and save them as JSONL in output_dir."
        },
    )
    is_encoder_decoder: bool | None = field(
        default=None, metadata={"help": "Whether the model is encoder-decoder (detected from the model when None)."}
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when `model` is an id or path (JSON)."}
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes used to tokenize the dataset."})

    # ---- orpo's own fields ------------------------------------------------------------
    nll_scope: str = field(
        default="completion",
        metadata=_choice(
            "Tokens the NLL (SFT) term covers: the chosen completion only (the paper's L_SFT) or prompt and "
            "completion (TRL's ORPOTrainer and the authors' script by default).",
            NLL_SCOPES,
        ),
    )
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Pad each batch's length to a multiple of this (e.g. 8 for tensor cores)."}
    )
    fused_lm_head: bool = field(
        default=True,
        metadata={
            "help": "Compute token log-probs chunked through the LM head, only on scored tokens, never holding "
            "full-vocabulary logits (exact; falls back to the plain path for models it does not support)."
        },
    )
    padding_free: bool = field(
        default=False,
        metadata={
            "help": "Pack the chosen and rejected sequences of all pairs of a batch into one row with position ids "
            "restarting per sequence, so no compute goes to padding (same loss as padded batches; fast with "
            "attn_implementation flash_attention_2 or flex_attention, correct with sdpa and eager)."
        },
    )
    freeze_vision_tower: bool = field(
        default=False,
        metadata={
            "help": "Vision-language models: do not train the vision encoder (its weights, and any adapter in it, "
            "stay as loaded); the projector and the language model train as usual."
        },
    )
    shared_prompt: bool = field(
        default=False,
        metadata={
            "help": "Run each pair's prompt once for both completions: pairs packed as prompt|chosen|rejected in one "
            "row, with an attention mask that hides chosen from rejected (same loss; padding-free too, so it "
            "overrides padding_free; needs attn_implementation sdpa, eager or flex_attention, and flex_attention "
            "to save attention compute on GPU)."
        },
    )
    on_identical_pair: str = field(
        default="drop", metadata=_choice("Rows whose chosen equals rejected (no preference signal).", ROW_POLICIES)
    )
    on_empty_completion: str = field(
        default="drop", metadata=_choice("Rows whose chosen or rejected text is empty or blank.", ROW_POLICIES)
    )
    on_duplicate: str = field(
        default="keep", metadata=_choice("Rows identical to an earlier row (prompt, chosen, rejected).", ROW_POLICIES)
    )
    on_too_long: str = field(
        default="truncate",
        metadata=_choice("Rows over max_length/max_prompt_length/max_completion_length.", LENGTH_POLICIES),
    )
    on_nonfinite: str = field(
        default="error",
        metadata=_choice(
            "A batch with a non-finite loss or gradient: stop with a report, or skip the update.", NONFINITE_POLICIES
        ),
    )

    # TRL's defaults that differ from TrainingArguments.
    learning_rate: float = field(default=1e-6, metadata={"help": "The initial learning rate (TRL's ORPO default)."})
    logging_steps: float = field(
        default=10,
        metadata={"help": "Log every X update steps (an integer, or a ratio of the total steps if below 1)."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept for compatibility; orpo always keeps the columns it needs."}
    )

    def __post_init__(self) -> None:
        checks = [
            ("truncation_mode", TRUNCATION_MODES),
            ("nll_scope", NLL_SCOPES),
            ("on_identical_pair", ROW_POLICIES),
            ("on_empty_completion", ROW_POLICIES),
            ("on_duplicate", ROW_POLICIES),
            ("on_too_long", LENGTH_POLICIES),
            ("on_nonfinite", NONFINITE_POLICIES),
        ]
        for name, allowed in checks:
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"ORPOConfig.{name}={value!r} is not one of {', '.join(allowed)}")
        if self.beta < 0:
            raise ValueError(f"ORPOConfig.beta must be >= 0, got {self.beta}")
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"ORPOConfig.{name} must be a positive integer or None, got {value}")
        # max_prompt_length >= max_length is allowed, as in TRL: `ORPOConfig(max_length=512)` keeps the default
        # max_prompt_length=512, and encoder-decoder prompts do not count towards max_length at all.  A prompt that
        # leaves no room for a completion drops its pair, counted in the data report.
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(
                f"ORPOConfig.pad_to_multiple_of must be a positive integer or None, got {self.pad_to_multiple_of}"
            )
        if isinstance(self.model_init_kwargs, str):
            import json

            try:
                self.model_init_kwargs = json.loads(self.model_init_kwargs)
            except json.JSONDecodeError as err:
                raise ValueError(f"ORPOConfig.model_init_kwargs is not valid JSON: {err}") from None
        super().__post_init__()
