"""What to train on and how, as dataclasses: the fields every flag, YAML key and Python argument comes from.

:class:`ModelArguments` and :class:`DataArguments` hold what ``ORPOConfig`` does not (which model and data,
LoRA, quantization, chat template), with TRL's and the alignment-handbook's field names.
:class:`ORPOArguments` holds ORPO's own fields; :class:`~orpo.ORPOConfig` is ``TrainingArguments`` plus these.
This module imports neither torch nor transformers, so commands that only need the fields start fast.

Other tools' names for a field are listed in its metadata as ``aliases`` (flag strings, the convention of
``transformers.HfArgumentParser``, which therefore accepts them too).  A field's ``choices`` and its numeric
``rule`` (:mod:`orpo.config.rules`) are declared here once and checked by :mod:`orpo.config.values` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from orpo.config.dataset_mixture import check_with
from orpo.config.rules import ANY_FINITE, Metadata, Range, RangeWhen
from orpo.config.usage import UsageError
from orpo.config.values import check_fields

DTYPES = ("auto", "bfloat16", "float16", "float32")
QUANTIZATIONS = ("int4", "int8")
MIXED_PRECISIONS = ("fp16", "bf16", "no")
TRUNCATION_MODES = ("keep_end", "keep_start")
NLL_SCOPES = ("completion", "prompt_and_completion")
ROW_POLICIES = ("error", "drop", "keep")
LENGTH_POLICIES = ("error", "drop", "truncate")
NONFINITE_POLICIES = ("error", "skip")
MIXINGS = ("fractions", "probabilities")
#: The batch layouts, the one list of their names (``orpo.scoring.layouts.Layout`` takes its values from it).
LAYOUT_NAMES = ("padded", "padding_free", "shared_prompt")
#: ``layout`` values: "auto", then the layouts.
LAYOUTS = ("auto", *LAYOUT_NAMES)


def aliases(*names: str) -> list[str]:
    """Flag strings for other names of a field: ``aliases("dpo_beta")`` -> ``["--dpo_beta", "--dpo-beta"]``."""
    flags: list[str] = []
    for name in names:
        flags.append(f"--{name}")
        if "_" in name:
            flags.append(f"--{name.replace('_', '-')}")
    return flags


def meta(
    help_text: str,
    choices: tuple[str, ...] | None = None,
    also: tuple[str, ...] = (),
    rule: Range | None = None,
    rule_when: RangeWhen | None = None,
) -> dict[str, Any]:
    """Field metadata: help, choices and aliases, in the keys argparse and HfArgumentParser understand, and
    orpo's range of a numeric field (``rule``; ``rule_when``: a range that depends on another field)."""
    out = Metadata(help=help_text)
    if choices:
        out["choices"] = list(choices)
    if also:
        out["aliases"] = aliases(*also)
    if rule is not None:
        out["rule"] = rule
    if rule_when is not None:
        out["rule_when"] = rule_when
    return out


def _check(obj: Any, owner: str | None = None) -> None:

    check_fields(obj, owner)


@dataclass
class ModelArguments:
    """The model to train and how: loading, LoRA, quantization, chat template."""

    model_name_or_path: str | None = field(
        default=None, metadata=meta("Model to fine-tune: a hub id or a local directory.", also=("model", "model_path"))
    )
    model_revision: str | None = field(default=None, metadata=meta("Branch, tag or commit of a hub model."))
    dtype: str | None = field(
        default=None,
        metadata=meta("Dtype the weights are loaded in (default: the model's own).", DTYPES, also=("torch_dtype",)),
    )
    attn_implementation: str | None = field(
        default=None, metadata=meta("Attention kernel: eager, sdpa, flash_attention_2, flex_attention...")
    )
    chat_template: str | None = field(
        default=None,
        metadata=meta(
            "Chat template for conversational data: 'tokenizer' (the tokenizer's own, the default), 'chatml', "
            "'zephyr', a Jinja template, or a path to a .jinja file."
        ),
    )
    quantization: str | None = field(
        default=None,
        metadata=meta(
            "Load the base model quantized with bitsandbytes (QLoRA; needs a GPU; none: off).", QUANTIZATIONS
        ),
    )
    use_peft: bool = field(default=False, metadata=meta("Train a LoRA adapter instead of all weights.", also=("peft",)))
    lora_r: int = field(default=16, metadata=meta("LoRA rank.", rule=Range(ge=1)))
    lora_alpha: int = field(default=32, metadata=meta("LoRA alpha (scale = alpha / r).", rule=Range(ge=1)))
    lora_dropout: float = field(default=0.05, metadata=meta("Dropout on the LoRA input.", rule=Range(ge=0, lt=1)))
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata=meta(
            "Modules that get LoRA: 'all-linear' (default) or names, e.g. q_proj,v_proj.", also=("target_modules",)
        ),
    )
    lora_modules_to_save: list[str] | None = field(
        default=None, metadata=meta("Modules trained in full next to the adapter (e.g. lm_head embed_tokens).")
    )
    merge_adapter: bool = field(
        default=False,
        metadata=meta(
            "After LoRA training, save the merged full model in the output dir (the adapter goes to adapter/)."
        ),
    )
    use_dora: bool = field(
        default=False, metadata=meta("Weight-decomposed LoRA (DoRA): magnitude and direction trained apart.")
    )
    use_rslora: bool = field(default=False, metadata=meta("Rank-stabilised LoRA: scale alpha / sqrt(r) instead of r."))
    lora_config: dict[str, Any] | None = field(
        default=None,
        metadata=meta(
            'Any other peft.LoraConfig option, as a JSON/YAML mapping (e.g. {"init_lora_weights": "pissa"}); '
            "keys with their own option (r, lora_alpha, target_modules...) are refused.",
            also=("peft_config",),
        ),
    )
    resize_embeddings: bool = field(
        default=False,
        metadata=meta(
            "Grow the model's input (and tied output) embeddings when the tokenizer has more tokens than they have "
            "rows (added or special tokens), to a multiple of 64; without it such a pair is refused at load. "
            "New rows start at the mean embedding; with --peft they train only if embed_tokens/lm_head are in "
            "--lora-modules-to-save.",
            also=("resize_token_embeddings", "resize_vocab"),
        ),
    )
    merge_start_adapter: bool = field(
        default=False,
        metadata=meta(
            "When --model is a LoRA adapter directory: merge it into its base first and train the merged model "
            "(in full, or a new adapter with --peft) instead of continuing the adapter."
        ),
    )

    def __post_init__(self) -> None:
        _check(self)


@dataclass
class DataArguments:
    """Where the preference data is and which columns hold what."""

    dataset_name: str | None = field(
        default=None,
        metadata=meta(
            "Preference data: a .jsonl/.json/.csv/.parquet file, a folder, a glob or a hub dataset id.",
            also=("data_path", "dataset", "data"),
        ),
    )
    dataset_config: str | None = field(
        default=None, metadata=meta("Subset (config name) of a hub dataset.", also=("subset", "dataset_subset"))
    )
    dataset_train_split: str | None = field(
        default=None,
        metadata=meta(
            "Training split, slices allowed: train, train[:1000] (default: train or the only split).",
            also=("train_split", "split"),
        ),
    )
    dataset_test_split: str | None = field(
        default=None,
        metadata=meta("Split to evaluate on, e.g. validation or test.", also=("valid_split", "eval_split")),
    )
    prompt_text_column: str | None = field(default=None, metadata=meta("Column holding the prompt (default: prompt)."))
    text_column: str | None = field(
        default=None, metadata=meta("Column holding the chosen completion (default: chosen, else text).")
    )
    rejected_text_column: str | None = field(
        default=None, metadata=meta("Column holding the rejected completion (default: rejected).")
    )
    image_column: str | None = field(
        default=None, metadata=meta("Column holding images, for vision-language models (default: images, image).")
    )
    max_samples: int | None = field(
        default=None, metadata=meta("Use only the first N training pairs (quick tries).", rule=Range(ge=1))
    )
    streaming: bool = field(
        default=False,
        metadata=meta(
            "Stream the training data (datasets.IterableDataset) instead of loading it whole; prepared as read. "
            "Needs max_steps."
        ),
    )
    dataset_mixer: dict[str, float] | None = field(
        default=None,
        metadata=meta(
            "Several sources (files, folders, hub ids) as {source: weight} (JSON on the command line); the weights "
            "are read as dataset_mixing says. Replaces dataset_name.",
            rule=Range(ge=0, each=True, item="weight"),
            rule_when=RangeWhen(
                "dataset_mixing",
                {"fractions": Range(ge=0, le=1, each=True, item="fraction", note="with dataset_mixing fractions")},
            ),
        ),
    )
    dataset_mixing: str = field(
        default="fractions",
        metadata=meta(
            "How dataset_mixer's weights mix: 'fractions' (alignment-handbook: that fraction of each source's rows, "
            "concatenated and shuffled) or 'probabilities' (datasets.interleave_datasets: each row drawn from a "
            "source with that probability until one runs out; works with streaming).",
            MIXINGS,
        ),
    )

    dataset_mixture: dict[str, Any] | None = field(
        default=None,
        metadata=meta(
            "The alignment-handbook's mixture, {datasets: [{id, config, split, columns, weight}], seed, "
            "test_split_size} (JSON on the command line): each dataset's columns kept, weight the fraction of its "
            "rows taken after a shuffle with seed, the mixture shuffled with seed, test_split_size (a fraction or "
            "a row count) held out for evaluation. Replaces dataset_name."
        ),
    )

    def __post_init__(self) -> None:
        _check(self)
        if self.dataset_mixture is not None:
            check_with(self.dataset_mixture, vars(self))


@dataclass
class ORPOArguments:
    """ORPO's fields of :class:`~orpo.ORPOConfig` (TRL's names and defaults first, then orpo's own)."""

    # ---- TRL-compatible fields ---------------------------------------------------------
    beta: float = field(
        default=0.1,
        metadata=meta(
            "Weight of the odds-ratio term (lambda in the ORPO paper): loss = NLL + beta * L_OR.",
            also=("dpo_beta",),
            rule=Range(ge=0),
        ),
    )
    max_length: int | None = field(
        default=1024,
        metadata=meta("Max tokens of prompt + completion per sequence (None: no limit).", rule=Range(ge=1)),
    )
    max_prompt_length: int | None = field(
        default=512,
        metadata=meta(
            "Max prompt tokens, truncated by `truncation_mode` (None: no limit). Used as given, also when it is not "
            "below max_length: pairs left without room for a completion are dropped and counted.",
            rule=Range(ge=1),
        ),
    )
    max_completion_length: int | None = field(
        default=None,
        metadata=meta("Max tokens of each completion, cut from the end (None: no limit).", rule=Range(ge=1)),
    )
    truncation_mode: str = field(
        default="keep_end",
        metadata=meta(
            "Which part of an over-long prompt to keep: its end (the question) or its start.", TRUNCATION_MODES
        ),
    )
    disable_dropout: bool = field(default=True, metadata=meta("Set every dropout probability of the model to 0."))
    label_pad_token_id: int = field(
        default=-100, metadata=meta("Label value of tokens that carry no loss.", rule=ANY_FINITE)
    )
    padding_value: int | None = field(
        default=None,
        metadata=meta("Token id used to pad input_ids (default: the tokenizer's pad_token_id).", rule=Range(ge=0)),
    )
    generate_during_eval: bool = field(
        default=False,
        metadata=meta("After each evaluation, generate for a few eval prompts and save them as JSONL in output_dir."),
    )
    is_encoder_decoder: bool | None = field(
        default=None, metadata=meta("Whether the model is encoder-decoder (detected from the model when None).")
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata=meta("Keyword arguments for from_pretrained when `model` is an id or path (JSON).")
    )
    chat_template_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata=meta(
            "Extra keyword arguments for the chat template of conversational data (JSON), e.g. "
            '{"enable_thinking": false}.'
        ),
    )
    trust_remote_code: bool = field(
        default=False,
        metadata=meta("Allow models whose code lives in their repository (for the model, its config and tokenizer)."),
    )
    dataset_num_proc: int | None = field(
        default=None,
        metadata=meta(
            "Processes used to tokenize the dataset.", also=("preprocessing_num_workers", "num_proc"), rule=Range(ge=1)
        ),
    )

    # ---- orpo's own fields ------------------------------------------------------------
    nll_scope: str = field(
        default="completion",
        metadata=meta(
            "Tokens the NLL (SFT) term covers: the chosen completion only (the paper's L_SFT) or prompt and "
            "completion (TRL's ORPOTrainer and the authors' script by default).",
            NLL_SCOPES,
        ),
    )
    pad_to_multiple_of: int | None = field(
        default=None,
        metadata=meta("Pad each batch's length to a multiple of this (e.g. 8 for tensor cores).", rule=Range(ge=1)),
    )
    fused_lm_head: bool = field(
        default=True,
        metadata=meta(
            "Compute token log-probs chunked through the LM head, only on scored tokens, never holding "
            "full-vocabulary logits (exact; falls back to the plain path for models it does not support)."
        ),
    )
    layout: str = field(
        default="auto",
        metadata=meta(
            "How a batch lays out its pairs (same loss in every layout): padded rows; padding_free, all "
            "sequences in one row; shared_prompt, each pair as prompt|chosen|rejected in one row, the prompt run "
            "once. Row layouts run attention per sequence (sdpa, eager, flash_attention_2/3, flex_attention on "
            "GPU). auto: shared_prompt where the model's attention can run it, else padding_free, else padded; "
            "the choice and its reason are logged once.",
            LAYOUTS,
        ),
    )
    padding_free: bool = field(
        default=False,
        metadata=meta(
            "Ask for layout padding_free (all sequences of a batch in one row, no compute on padding); "
            "with layout auto only (or a layout that agrees)."
        ),
    )
    freeze_vision_tower: bool = field(
        default=False,
        metadata=meta(
            "Vision-language models: do not train the vision encoder (its weights, and any adapter in it, "
            "stay as loaded); the projector and the language model train as usual."
        ),
    )
    shared_prompt: bool = field(
        default=False,
        metadata=meta(
            "Ask for layout shared_prompt (each pair's prompt run once for both completions; padding-free "
            "too, so it may be combined with padding_free); with layout auto or shared_prompt."
        ),
    )
    output_router_logits: bool | None = field(
        default=None,
        metadata=meta(
            "Mixture-of-experts models: add router_aux_loss_coef * the router's load-balancing loss to the ORPO "
            "loss and log it as aux_loss, as TRL's ORPOTrainer does (None: the model config's "
            "output_router_logits). Counted over real tokens in every layout."
        ),
    )
    router_aux_loss_coef: float | None = field(
        default=None,
        metadata=meta(
            "Weight of the load-balancing loss when output_router_logits is on (None: the model config's "
            "router_aux_loss_coef).",
            rule=Range(ge=0),
        ),
    )
    on_identical_pair: str = field(
        default="drop", metadata=meta("Rows whose chosen equals rejected (no preference signal).", ROW_POLICIES)
    )
    on_empty_completion: str = field(
        default="drop", metadata=meta("Rows whose chosen or rejected text is empty or blank.", ROW_POLICIES)
    )
    on_duplicate: str = field(
        default="keep", metadata=meta("Rows identical to an earlier row (prompt, chosen, rejected).", ROW_POLICIES)
    )
    on_empty_prompt: str = field(
        default="keep",
        metadata=meta(
            "Rows whose prompt is empty or blank: kept by default (still a full preference pair; counted and "
            "warned about, since a wrongly mapped prompt column shows this way).",
            ROW_POLICIES,
        ),
    )
    on_too_long: str = field(
        default="truncate",
        metadata=meta("Rows over max_length/max_prompt_length/max_completion_length.", LENGTH_POLICIES),
    )
    on_nonfinite: str = field(
        default="error",
        metadata=meta(
            "A batch with a non-finite loss or gradient: stop with a report, or skip the update.", NONFINITE_POLICIES
        ),
    )

    def check_orpo_fields(self, owner: str | None = None) -> None:
        """Validate (and parse ``model_init_kwargs`` JSON): errors name the field, e.g. ``ORPOConfig.beta``
        (``owner``: the class to name, by default this object's).  Each field's choices and range are
        checked by :func:`orpo.config.values.check_fields` (on an ``ORPOConfig``, its inherited fields too)."""
        owner = owner or type(self).__name__
        _check(self, owner)
        self.requested_layout(owner)
        # max_prompt_length >= max_length is allowed, as in TRL: `ORPOConfig(max_length=512)` keeps the default
        # max_prompt_length=512, and encoder-decoder prompts do not count towards max_length at all.  A prompt that
        # leaves no room for a completion drops its pair, counted in the data report.
        for name in ("model_init_kwargs", "chat_template_kwargs"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    setattr(self, name, json.loads(value))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{owner}.{name} is not valid JSON: {err}") from None
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                raise ValueError(f"{owner}.{name} must be a mapping (JSON object), got {getattr(self, name)!r}")

    def requested_layout(self, owner: str | None = None) -> str:
        """The one layout asked for: ``layout`` unless "auto", else the one a switch asks for.

        ``shared_prompt: true`` asks for shared_prompt, ``padding_free: true`` for a padding-free
        layout (padding_free, or shared_prompt, which is padding-free too); a ``layout`` they
        contradict is a :class:`~orpo.config.usage.UsageError` naming the options.
        """

        owner = owner or type(self).__name__
        requested = self.layout
        if requested == "auto":
            requested = "shared_prompt" if self.shared_prompt else "padding_free" if self.padding_free else "auto"
        contradicted = [
            switch
            for switch, on, agrees in (
                ("shared_prompt", self.shared_prompt, ("shared_prompt",)),
                ("padding_free", self.padding_free, ("padding_free", "shared_prompt")),
            )
            if on and requested not in agrees
        ]
        if contradicted:
            switches = " and ".join(f"{owner}.{name}=True" for name in contradicted)
            raise UsageError(
                f"{owner}.layout={self.layout!r} contradicts {switches}: set layout alone "
                f"(one of {', '.join(LAYOUTS)}) or leave it 'auto'"
            )
        return requested
