"""Trying a trained model: load it (full model or LoRA adapter), generate, chat, merge.

Prompts are rendered exactly as in training: the tokenizer's chat template with the
generation prompt, BOS exactly once (:func:`orpo.data.tokenize.finalize_prompt`).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from orpo.config.usage import describe_write_error
from orpo.models.damaged import naming_damaged_files, read_json
from orpo.models.sources import check_model_source, resolve_chat_template

if TYPE_CHECKING:
    from orpo.models.loading import HubSource

logger = logging.getLogger(__name__)

#: End-of-turn tokens of common chat templates; generation stops at any of them.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>")


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` is a LoRA (PEFT) adapter folder: it has an ``adapter_config.json``.

    Args:
        path: a folder (or anything else: False).
    """
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(path: str | Path) -> str | None:
    """The base model an adapter folder names (``base_model_name_or_path``), or None.

    Args:
        path: the adapter's folder.

    Raises:
        DamagedFile: its ``adapter_config.json`` is truncated or not JSON.
    """

    config = read_json(Path(path) / "adapter_config.json")  # a damaged one: named
    return config.get("base_model_name_or_path") if isinstance(config, dict) else None


def _has_tokenizer(path: str | Path) -> bool:
    return any((Path(path) / name).is_file() for name in ("tokenizer_config.json", "tokenizer.json"))


def default_device() -> str:
    """``"cuda"`` where a CUDA GPU is available, else ``"cpu"``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def load_for_inference(
    path: str,
    base: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    chat_template: str | None = None,
    source: HubSource | None = None,
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a saved model directory, hub id, or LoRA adapter directory.

    ``source`` (revision, trust_remote_code) applies to the model loaded: ``path``, or an adapter's base.

    Args:
        path: a saved model folder, a hub id, or a LoRA adapter folder (loaded on its base).
        base: an adapter's base model, instead of the one its config names.
        dtype: the weights' dtype name (``"bfloat16"``, ``"float16"``, ``"float32"``, ``"auto"``); None: the default.
        device: where to put the model; None: :func:`default_device`.
        chat_template: a template name, file or Jinja text replacing the tokenizer's
            (:func:`~orpo.models.sources.resolve_chat_template`).
        source: the revision and remote-code permission of the model loaded.

    Raises:
        FileNotFoundError: a local path that does not exist or is not a saved model.
        ValueError: an adapter whose base is not known (pass ``base``).
    """
    from orpo.models.loading import load_model_and_processor

    template = resolve_chat_template(chat_template)
    check_model_source(path)
    adapter = is_adapter_dir(path)
    name, tokenizer_from = _adapter_sources(path, base) if adapter else (path, path)
    model, tokenizer = load_model_and_processor(
        name, None, _init_kwargs(dtype, source), chat_template=template, tokenizer_from=tokenizer_from
    )
    if adapter:
        from peft import PeftModel

        with naming_damaged_files(path, "adapter"):
            model = PeftModel.from_pretrained(model, path)
    model.to(device or default_device())
    model.eval()
    return model, tokenizer


def _adapter_sources(adapter_dir: str, base: str | None) -> tuple[str, str]:
    """(the base model, where the tokenizer is) of a LoRA adapter directory: the tokenizer saved beside the
    adapter (training may have changed it), else the base's."""

    base = base or adapter_base(adapter_dir)
    if not base:
        raise ValueError(f"{adapter_dir}/adapter_config.json names no base model; pass --base")
    check_model_source(base)
    return base, adapter_dir if _has_tokenizer(adapter_dir) else base


def _init_kwargs(dtype: str | None, source: HubSource | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype else {}
    return {**kwargs, **source.kwargs()} if source is not None else kwargs


def render_prompt(
    tokenizer: Any, prompt: str | list[dict[str, Any]], system: str | None = None, use_chat_template: bool = True
) -> str:
    """The text the model continues: the chat template with the generation prompt, or the raw prompt.

    Args:
        tokenizer: a tokenizer or processor.
        prompt: a user message, or a whole conversation (a list of ``{"role", "content"}`` messages).
        system: a system message, put first unless the conversation has one.
        use_chat_template: False (or a tokenizer without a template): the prompt as it is; ``system`` is dropped.

    Raises:
        ValueError: a conversation but no chat template to render it.
    """
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    if use_chat_template and getattr(tok, "chat_template", None):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if system and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": system}, *messages]
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, list):
        raise ValueError("the tokenizer has no chat template, so prompts must be plain text (or pass --chat-template)")
    return prompt


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The ids generation stops at: EOS, and those of :data:`END_OF_TURN_TOKENS` that are special tokens of
    this tokenizer.

    Args:
        tokenizer: a tokenizer or processor.
    """
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    vocab = tok.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab and vocab[token] not in ids and token in tok.all_special_tokens:
            ids.append(vocab[token])
    return ids


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt, with BOS exactly once (as in training).

    Args:
        tokenizer: a tokenizer or processor.
        text: the rendered prompt (:func:`render_prompt`).
    """
    from orpo.data.tokenize import SpecialTokens, finalize_prompt

    tok = getattr(tokenizer, "tokenizer", tokenizer)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return finalize_prompt(ids, SpecialTokens.probe(tok))


#: Config fields that hold a model's context length, by model family.
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length(model: Any) -> int | None:
    """The number of positions the model was built for (its text model's, for a vision-language model).

    Args:
        model: a model with a ``config``.

    Returns:
        The context length, or None where the config does not say.
    """
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for owner in (text, config):
        for name in _CONTEXT_FIELDS:
            value = getattr(owner, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def new_token_budget(model: Any, prompt_tokens: int, max_new_tokens: int) -> int:
    """``max_new_tokens``, cut to what the model's context leaves after the prompt (with a notice).

    Args:
        model: the model (its context length, :func:`context_length`).
        prompt_tokens: the prompt's length in tokens.
        max_new_tokens: the tokens asked for.

    Raises:
        ValueError: the prompt fills the whole context.
    """
    context = context_length(model)
    if context is None:
        return max_new_tokens
    room = context - prompt_tokens
    if room <= 0:
        raise ValueError(f"the prompt has {prompt_tokens} tokens but the model's context is {context}: shorten it")
    if max_new_tokens > room:
        logger.warning(
            "max_new_tokens=%d does not fit the model's context (%d tokens, %d of them the prompt): generating at "
            "most %d tokens",
            max_new_tokens,
            context,
            prompt_tokens,
            room,
        )
        return room
    return max_new_tokens


class _Streamer:
    """Writes a completion to ``stream`` as it is generated (transformers' ``TextStreamer`` decoding), as
    :func:`generate` returns it: without surrounding whitespace, ending at the first stop token."""

    def __init__(self, tokenizer: Any, stream: TextIO, skip_special_tokens: bool) -> None:
        from transformers import TextStreamer

        write = self.write

        class Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                write(text)

        self.streamer = Streamer(tokenizer, skip_prompt=True, skip_special_tokens=skip_special_tokens)
        self.stream = stream
        self.started = False
        self.pending = ""  # whitespace held back until text follows it

    def write(self, text: str) -> None:
        if not self.started:
            text = text.lstrip()
            if not text:
                return
            self.started = True
        body = text.rstrip()
        if not body:
            self.pending += text
            return
        self.stream.write(self.pending + body)
        self.stream.flush()
        self.pending = text[len(body) :]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, Any]]],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    system: str | None = None,
    use_chat_template: bool = True,
    seed: int | None = None,
    skip_special_tokens: bool = True,
    stream: TextIO | None = None,
    before_each: Callable[[Any], None] | None = None,
) -> list[str]:
    """Greedy (temperature 0) or sampled completions of each prompt, cut at the first stop token.

    At most what the model's context leaves is generated (:func:`new_token_budget`).  ``stream``: each
    completion is also written there as it is generated (after ``before_each(prompt)``, e.g. a header;
    a newline follows it).  ``skip_special_tokens=False`` keeps other special tokens visible (e.g. an
    untrained model's stray ``<pad>``).

    Args:
        model: the model, in eval mode.
        tokenizer: its tokenizer or processor.
        prompts: user messages or conversations (see :func:`render_prompt`).
        max_new_tokens: the most tokens per completion.
        temperature: 0: greedy; above 0: sampling at this temperature.
        top_p: nucleus sampling's probability mass (only when sampling).
        system: a system message for each prompt.
        use_chat_template: render through the chat template (see :func:`render_prompt`).
        seed: seeds torch once, before the first prompt; None: not seeded.
        skip_special_tokens: drop special tokens from the decoded text.
        stream: a text stream each completion is also written to as it is generated.
        before_each: called with each prompt before its completion is streamed (only with ``stream``).

    Returns:
        One completion per prompt, stripped of surrounding whitespace.
    """
    import torch

    tok = getattr(tokenizer, "tokenizer", tokenizer)
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    stops = stop_token_ids(tok)
    outputs = []
    for prompt in prompts:
        ids = encode_prompt(tok, render_prompt(tok, prompt, system, use_chat_template))
        input_ids = torch.tensor([ids], device=device)
        sample = temperature > 0
        extra: dict[str, Any] = {"temperature": temperature, "top_p": top_p} if sample else {}
        budget = new_token_budget(model, len(ids), max_new_tokens)
        if stream is not None:
            extra["streamer"] = _Streamer(tok, stream, skip_special_tokens).streamer
            if before_each is not None:
                before_each(prompt)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=budget,
                do_sample=sample,
                eos_token_id=stops or None,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else (stops[0] if stops else 0),
                **extra,
            )
        if stream is not None:
            stream.write("\n")
            stream.flush()
        new = out[0, input_ids.shape[1] :].tolist()
        cut = next((i for i, token in enumerate(new) if token in stops), len(new))
        outputs.append(tok.decode(new[:cut], skip_special_tokens=skip_special_tokens).strip())
    return outputs


#: What ``orpo chat`` answers itself instead of sending to the model.
CHAT_COMMANDS = {
    "/help": "list these commands",
    "/reset": "clear the conversation (the system prompt stays)",
    "/exit": "leave (also /quit, or end of input)",
}
_COMMAND_RE = re.compile(r"^/[A-Za-z?]+$")


def chat_help() -> str:
    """The chat commands and what they do, one indented line each."""
    return "\n".join(f"  {name:<8}{text}" for name, text in CHAT_COMMANDS.items())


def chat(
    model: Any,
    tokenizer: Any,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 0.9,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """An interactive chat on the terminal, each reply written as it is generated.  A line that is one
    /word is a command (:data:`CHAT_COMMANDS`), never sent to the model.

    The conversation so far is sent with each message; it ends at ``/exit``, ``/quit`` or the end of input.

    Args:
        model: the model, in eval mode.
        tokenizer: its tokenizer or processor; it needs a chat template.
        system: a system message, kept across ``/reset``.
        max_new_tokens: the most tokens per reply.
        temperature: 0: greedy; above 0: sampling at this temperature.
        top_p: nucleus sampling's probability mass.
        stdin: where messages are read; None: ``sys.stdin`` (prompts are shown only on a terminal).
        stdout: where replies are written; None: ``sys.stdout``.

    Returns:
        0, the exit status.

    Raises:
        ValueError: the tokenizer has no chat template.
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    if not getattr(tok, "chat_template", None):
        raise ValueError(
            "the model's tokenizer has no chat template: pass --chat-template (e.g. chatml) or use `orpo generate`"
        )
    history: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    interactive = stdin.isatty()
    if interactive:
        print("chat with the model: /help lists the commands, /reset clears the history, /exit leaves", file=stdout)
    while True:
        if interactive:
            print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if _COMMAND_RE.match(text):
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                history = history[:1] if system else []
                print("(history cleared)", file=stdout)
            elif text in ("/help", "/?"):
                print(chat_help(), file=stdout)
            else:
                print(f"(unknown command {text}; /help lists the commands)", file=stdout)
            continue
        history.append({"role": "user", "content": text})

        def header(_prompt: Any) -> None:
            print("model> ", end="", file=stdout, flush=True)

        reply = generate(model, tok, [history], max_new_tokens, temperature, top_p, stream=stdout, before_each=header)
        history.append({"role": "assistant", "content": reply[0]})
    return 0


def merge_adapter(
    adapter_dir: str,
    output_dir: str,
    base: str | None = None,
    dtype: str | None = None,
    source: HubSource | None = None,
) -> str:
    """Merge a LoRA adapter into its base model and save the full model (and tokenizer) to ``output_dir``.

    ``source`` (revision, trust_remote_code) applies to the base model.

    Args:
        adapter_dir: the adapter's folder.
        output_dir: where the merged model goes; created if missing.
        base: the base model, instead of the one the adapter's config names.
        dtype: the base weights' dtype name; None: the default.
        source: the revision and remote-code permission of the base model.

    Returns:
        ``output_dir``.

    Raises:
        FileNotFoundError: no such adapter folder.
        ValueError: the folder is not an adapter, or its base is not known.
        OSError: the merged model could not be written.
    """
    from peft import PeftModel

    from orpo.models.loading import load_model_and_processor

    if not Path(adapter_dir).is_dir():
        raise FileNotFoundError(f"adapter directory not found: {adapter_dir}")
    if not is_adapter_dir(adapter_dir):
        raise ValueError(f"{adapter_dir} is not a LoRA adapter directory (no adapter_config.json)")
    base, tokenizer_from = _adapter_sources(adapter_dir, base)
    model, tokenizer = load_model_and_processor(base, None, _init_kwargs(dtype, source), tokenizer_from=tokenizer_from)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    except (OSError, RuntimeError) as err:
        raise OSError(f"could not write the merged model to {out}: {describe_write_error(err, str(out))}") from err
    return str(out)
