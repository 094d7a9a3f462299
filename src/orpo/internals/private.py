"""Every place orpo relies on transformers' private API or undocumented behaviour.

Nothing else in orpo touches a name of transformers that starts with ``_``: ``Trainer`` members (besides
overriding ``_save_checkpoint``, listed in :data:`OVERRIDDEN`), the flash-attention forward and the
attention registry that :mod:`orpo.scoring.attention` builds on, a model config's ``_attn_implementation``.  Each
function says what it relies on; ``tests/internals/test_internals.py`` checks every one of them against the
installed transformers and fails naming the version and the piece that changed.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any, cast

from transformers import PreTrainedModel, Trainer
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import SaveStrategy, rotate_checkpoints

from orpo.internals import releases

#: What ``Trainer`` names its state file and checkpoint folders (``checkpoint-<global step>``,
#: ``transformers.trainer_utils.PREFIX_CHECKPOINT_DIR``): orpo's checkpoints keep its layout so that
#: ``Trainer``'s own resume and rotation find them.
TRAINER_STATE_NAME = "trainer_state.json"
CHECKPOINT_PREFIX = "checkpoint-"


def checkpoint_dir(run_dir: str, step: int) -> str:
    """``run_dir/checkpoint-<step>``, as ``Trainer`` names its checkpoints.

    Args:
        run_dir: the run's output folder (:func:`run_dir`).
        step: the global step.
    """
    return os.path.join(run_dir, f"{CHECKPOINT_PREFIX}{step}")


#: Private ``Trainer`` methods ``ORPOTrainer`` overrides, with the parameters Trainer calls them with.
#: ``_save_checkpoint`` is where ``Trainer`` saves when ``control.should_save``; it offers no public hook
#: that runs before the files are written, and orpo must choose where they are written.
OVERRIDDEN: dict[str, tuple[str, ...]] = {"_save_checkpoint": ("self", "model", "trial")}


def run_dir(trainer: Trainer, trial: Any) -> str:
    """``Trainer._get_output_dir(trial)``: ``output_dir``, or the trial's folder under hyperparameter search.

    Args:
        trainer: the trainer.
        trial: the hyperparameter-search trial, or None.
    """
    return trainer._get_output_dir(trial=trial)


def write_checkpoint(trainer: Trainer, directory: str, run_dir: str, trial: Any) -> None:
    """Write what ``Trainer._save_checkpoint`` writes into ``run_dir/checkpoint-<step>``, into ``directory``.

    Relies on ``save_model(directory, _internal_call=True)`` saving the weights without pushing, and on
    ``_save_optimizer_and_scheduler``, ``_save_scaler`` and ``_save_rng_state`` each writing their files
    (per process where needed) into the folder they are given.  The contract test checks that these
    produce the same files as ``Trainer._save_checkpoint``.

    Args:
        trainer: the trainer.
        directory: the folder to write (a staging folder, committed afterwards).
        run_dir: the run's output folder, where the committed checkpoint will be.
        trial: the hyperparameter-search trial, or None.
    """
    if trainer.hp_search_backend is None and trial is None:
        trainer.store_flos()
    with _weights_as_held(trainer):
        trainer.save_model(directory, _internal_call=True)
    record_best_checkpoint(trainer, run_dir)
    if not trainer.args.save_only_model:
        trainer._save_optimizer_and_scheduler(directory)
        trainer._save_scaler(directory)
        trainer._save_rng_state(directory)


@contextlib.contextmanager
def _weights_as_held(trainer: Trainer) -> Iterator[None]:
    """Checkpoint weights in the layout the model holds them (``save_original_format=False``).

    ``Trainer._load_from_checkpoint`` restores a full checkpoint with a plain ``load_state_dict``, which does
    not undo the conversion ``save_pretrained`` applies by default (MoE experts written back per expert):
    the experts would silently keep their untrained weights on resume.  Saved as held, ``load_state_dict``
    restores them exactly and ``from_pretrained`` still loads the checkpoint.  PEFT adapters are unaffected.
    """
    model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    if not releases.SAVES_ORIGINAL_FORMAT or not isinstance(model, PreTrainedModel):
        yield
        return
    model.save_pretrained = functools.partial(type(model).save_pretrained, model, save_original_format=False)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.save_pretrained


def save_weights(trainer: Trainer, directory: str, state_dict: dict[str, Any]) -> None:
    """``Trainer._save(directory, state_dict)``: what ``save_model`` writes (weights through ``save_pretrained``,
    the processing class, ``training_args.bin``) from an already gathered state dict, on ``should_save``
    processes only; the others return (the gather was the collective).

    Args:
        trainer: the trainer.
        directory: the folder to write.
        state_dict: the model's full (gathered) state dict.
    """
    trainer._save(directory, state_dict=state_dict)


def record_best_checkpoint(trainer: Trainer, run_dir: str) -> None:
    """As ``Trainer._save_checkpoint``: point ``state.best_model_checkpoint`` at the best step's checkpoint
    once it exists, the one being written included (its final path, not the staging folder).

    Args:
        trainer: the trainer; its ``state.best_model_checkpoint`` is set.
        run_dir: the run's output folder.
    """
    args, state = trainer.args, trainer.state
    if args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST) and state.best_global_step:
        trainer.accelerator.wait_for_everyone()
        best = checkpoint_dir(run_dir, state.best_global_step)
        if state.best_global_step == state.global_step or os.path.exists(best):
            state.best_model_checkpoint = best


def save_trainer_state(trainer: Trainer, directory: str) -> None:
    """``trainer_state.json`` with the ``ExportableState`` callbacks' and the control's state, as
    ``Trainer._save_checkpoint`` exports them (resume reloads them through ``_load_callback_state``).

    Args:
        trainer: the trainer (only ``should_save`` processes write).
        directory: the checkpoint folder to write into.
    """
    if not trainer.args.should_save:
        return
    state = trainer.state
    exported = cast(dict[str, Any], state.stateful_callbacks)  # TrainerState keeps them by class name
    for callback in [*trainer.callback_handler.callbacks, trainer.control]:
        if isinstance(callback, ExportableState):
            name = type(callback).__name__
            if isinstance(exported.get(name), list):
                exported[name].append(callback.state())
            else:
                exported[name] = callback.state()
    state.save_to_json(os.path.join(directory, TRAINER_STATE_NAME))


def finish_checkpoint(trainer: Trainer, checkpoint: str, run_dir: str) -> None:
    """After the commit, what ``Trainer._save_checkpoint`` does last: ``_push_from_checkpoint`` (a
    background upload from the committed folder) and ``rotate_checkpoints`` for ``save_total_limit``.

    Args:
        trainer: the trainer.
        checkpoint: the committed checkpoint folder.
        run_dir: the run's output folder, whose checkpoints are rotated.
    """
    args = trainer.args
    if args.push_to_hub:
        trainer._push_from_checkpoint(checkpoint)
    if args.should_save:
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=args.save_total_limit,
            best_model_checkpoint=trainer.state.best_model_checkpoint,
            use_mtime=True,
        )


def unlogged_loss(trainer: Trainer) -> tuple[float, int]:
    """``Trainer._tr_loss`` (the loss summed since the last log) and ``_globalstep_last_logged``.

    They exist only while ``train()`` runs; outside it nothing is waiting to be logged.

    Args:
        trainer: the trainer.

    Returns:
        (the unlogged loss sum, 0.0 outside ``train()``; the step last logged, the global step outside it).
    """
    tr_loss = getattr(trainer, "_tr_loss", None)
    last_logged = getattr(trainer, "_globalstep_last_logged", trainer.state.global_step)
    return (float(tr_loss) if tr_loss is not None else 0.0), int(last_logged)


def restore_unlogged_loss(trainer: Trainer, tr_loss: float, last_logged: int) -> None:
    """Put back what :func:`unlogged_loss` saved; called from ``on_train_begin``, which ``Trainer`` fires
    right after resetting ``_tr_loss`` to 0 and ``_globalstep_last_logged`` to the resumed step.

    Args:
        trainer: the trainer, inside ``train()``.
        tr_loss: the unlogged loss sum to add back.
        last_logged: the step last logged.
    """
    trainer._tr_loss += tr_loss
    trainer._globalstep_last_logged = last_logged


def is_window_end(trainer: Trainer) -> bool:
    """Whether the micro-batch ``training_step`` just ran ends its gradient-accumulation window.

    ``Trainer`` sets ``accelerator.sync_gradients`` before each ``training_step``.  Were it ever left
    True throughout, the guard would read the gradients after every micro-batch: slower, same verdicts.

    Args:
        trainer: the trainer, inside ``train()``.
    """
    return bool(trainer.accelerator.sync_gradients)


def prepare_inputs(trainer: Trainer, inputs: dict[str, Any]) -> dict[str, Any]:
    """``Trainer._prepare_inputs``: a batch moved to the device (and cast for DeepSpeed), as
    ``training_step`` prepares it; for ``prediction_step``, which runs ``compute_loss`` itself.

    Args:
        trainer: the trainer.
        inputs: the collated batch.
    """
    return trainer._prepare_inputs(inputs)


# ---- attention (orpo.scoring.attention) -----------------------------------------------------------------
#: Keyword arguments :func:`flash_attention_forward` passes through, by the caller that needs them.
FLASH_KWARGS = (
    "attention_mask",
    "query_length",
    "is_causal",
    "dropout",
    "softmax_scale",
    "sliding_window",
    "softcap",
    "use_top_left_mask",
    "target_dtype",
    "attn_implementation",
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
)


def flash_attention_forward(*args: Any, **kwargs: Any) -> Any:
    """``transformers.modeling_flash_attention_utils._flash_attention_forward``: the flash entry point
    transformers' own layers call (dtype casts, sliding window, varlen from ``cu_seq_lens_*``); it has
    no public name, and going through it keeps flash-attn 2/3 and kernels-hub versions alike.

    Args:
        *args: passed on (query, key and value states...).
        **kwargs: passed on (:data:`FLASH_KWARGS`).
    """
    from transformers.modeling_flash_attention_utils import _flash_attention_forward

    return _flash_attention_forward(*args, **kwargs)


def attention_registered(name: str) -> bool:
    """Whether ``AttentionInterface`` globally knows ``name`` (its ``_global_mapping``), so that
    registering orpo's implementations stays idempotent.

    Args:
        name: an attention implementation's name.
    """
    from transformers import AttentionInterface

    return name in AttentionInterface._global_mapping


def attn_implementation(config: Any) -> str | None:
    """``PretrainedConfig._attn_implementation``: the attention a model dispatches to now (after
    ``set_attn_implementation``); the public ``attn_implementation`` argument is only what it loaded with.

    Args:
        config: a model config (the answer is None where it has no ``_attn_implementation``).
    """
    return getattr(config, "_attn_implementation", None)


def router_recorder(model: Any) -> tuple[type, int, str | None] | None:
    """``PreTrainedModel._can_record_outputs["router_logits"]``: the module class whose output (at an
    index, under a layer name) transformers records as a MoE model's router logits, or None where the
    model records none.  The one description of "the router" every MoE class in transformers gives;
    a bare class means index 1 there (transformers' default for outputs other than hidden states).

    Args:
        model: a model (or anything: None where it declares no router outputs).

    Returns:
        (the router module class, the index of the router logits in its output, the layer name or None), or
        None.
    """
    spec = (getattr(model, "_can_record_outputs", None) or {}).get("router_logits")
    if isinstance(spec, list):
        spec = spec[0] if len(spec) == 1 else None
    if isinstance(spec, type):
        return spec, 1, None
    target = getattr(spec, "target_class", None)
    if not isinstance(target, type):
        return None
    return target, int(getattr(spec, "index", 0)), getattr(spec, "layer_name", None)
