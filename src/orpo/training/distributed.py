"""One run over several processes: the launch check, the final save every process takes part in, quiet replicas.

Gathering a sharded model (FSDP, DeepSpeed ZeRO-3) is a collective: every process must call it, so the
final save cannot be a main-process-only step.  Writing the files stays with the processes that
``should_save`` (the main one, or each node's with ``save_on_each_node``).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from orpo.config.usage import UsageError
from orpo.models.adapters import start_adapter_base
from orpo.models.generation import merge_adapter

if TYPE_CHECKING:
    from orpo.config.arguments import ModelArguments
    from orpo.config.orpo_config import ORPOConfig
    from orpo.training.trainer import ORPOTrainer

logger = logging.getLogger(__name__)


def launched_processes() -> int:
    """How many processes the launcher (torchrun, accelerate, srun + torchrun) started: ``WORLD_SIZE``."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def is_launch_main() -> bool:
    """Whether this process is the launch's rank 0 (read from the environment: usable before any setup)."""
    return os.environ.get("RANK", "0") == "0"


def launch_changes(config: ORPOConfig, has_accelerator: bool) -> dict[str, Any]:
    """What the run's config needs so a multi-process launch trains as one run.

    On a machine without GPUs transformers forms a process group only with ``use_cpu``; without it
    ``torchrun --nproc_per_node 2`` would start two independent runs racing on one output dir.

    Args:
        config: the run's config (``use_cpu``).
        has_accelerator: whether this machine has a GPU (or another accelerator).

    Returns:
        Field -> value changes for the run's copy of the config (``{"use_cpu": True}`` or nothing).
    """
    processes = launched_processes()
    if processes > 1 and not config.use_cpu and not has_accelerator:
        logger.warning("%d processes launched on a machine without GPUs: they train together over gloo", processes)
        return {"use_cpu": True}
    return {}


def check_launch(trainer: ORPOTrainer) -> None:
    """One clear error for processes that did not join one group, one warning for FSDP that is not applied.

    Args:
        trainer: the trainer just built, with its ``args`` set up (``world_size`` known).

    Raises:
        UsageError: several processes were launched but each formed a group of one.
    """
    args = trainer.args
    processes = launched_processes()
    if processes > 1 and args.world_size == 1:
        raise UsageError(
            f"{processes} processes were launched (WORLD_SIZE={processes}) but they formed no process group, so "
            f"each would train alone and overwrite {args.output_dir}: on a machine without GPUs pass --use-cpu "
            "(use_cpu=True), which trains them together over gloo"
        )
    if args.fsdp and not trainer.is_fsdp_enabled and args.world_size > 1:
        logger.warning(
            "fsdp is set but this run is plain data parallel: accelerate applies FSDP only on GPUs (and other "
            "accelerators), not to CPU processes (%s)",
            trainer.accelerator.distributed_type,
        )


def quiet_replicas() -> None:
    """Console output from the main process only: orpo's warnings on the other processes are errors-only
    (each would print the same data report and warnings again)."""
    if not is_launch_main():
        logging.getLogger("orpo").setLevel(logging.ERROR)


def is_sharded(trainer: ORPOTrainer) -> bool:
    """Whether no process holds the whole model: FSDP, or DeepSpeed ZeRO-3.

    Args:
        trainer: the trainer whose accelerator setup is read.
    """
    if trainer.is_fsdp_enabled:
        return True
    if trainer.is_deepspeed_enabled:
        plugin = trainer.accelerator.state.deepspeed_plugin
        return plugin is not None and plugin.zero_stage == 3
    return False


def save_model(trainer: ORPOTrainer, output_dir: str) -> None:
    """Save the full model (or adapter) as ``from_pretrained`` loads it; call on every process.

    Under FSDP the full state dict is gathered whatever ``fsdp_state_dict_type`` says (with
    ``SHARDED_STATE_DICT``, ``Trainer.save_model`` writes no weights); DeepSpeed's ``save_model``
    gathers ZeRO-3 weights itself.  Only the processes that ``should_save`` write.

    Args:
        trainer: the trainer whose model is saved.
        output_dir: the folder to write.
    """
    from orpo.internals import private

    if trainer.is_fsdp_enabled:
        state_dict = trainer.accelerator.get_state_dict(trainer.model)  # a collective: every process
        private.save_weights(trainer, output_dir, state_dict)
    else:
        trainer.save_model(output_dir)
    trainer.accelerator.wait_for_everyone()


def save_final(trainer: ORPOTrainer, model_args: ModelArguments, output_dir: str) -> tuple[str | None, bool]:
    """The end-of-run save on every process: (the adapter's folder if one was saved, whether it was merged).

    A merged LoRA model of a sharded run is built on the main process from the saved adapter and the
    base weights on disk: the trained model's shards cannot be merged in place.

    Args:
        trainer: the trainer at the end of its run; holds the merged model afterwards when it was merged in memory.
        model_args: ``merge_adapter`` (merge a LoRA model, the adapter going to ``output_dir/adapter``), and the
            base model and quantization a merge from disk needs.
        output_dir: the run's output folder.

    Raises:
        CheckpointError: the merged model could not be written.
    """
    from orpo.models.loading import is_peft_model

    model: Any = trainer.model
    peft = is_peft_model(model)
    if not (peft and model_args.merge_adapter):  # a continued start adapter merges too, not only --peft
        save_model(trainer, output_dir)
        return (output_dir if peft else None), False
    adapter_dir = os.path.join(output_dir, "adapter")
    save_model(trainer, adapter_dir)
    if model_args.quantization is not None or is_sharded(trainer):
        if trainer.args.should_save:
            base = start_adapter_base(model_args) or model_args.model_name_or_path
            merge_adapter(adapter_dir, output_dir, base=base)
    else:
        merged = model.merge_and_unload()
        if trainer.args.should_save:
            _save_merged(trainer, merged, output_dir)
        trainer.model = merged
    trainer.accelerator.wait_for_everyone()
    return adapter_dir, True


def _save_merged(trainer: ORPOTrainer, merged: Any, output_dir: str) -> None:
    """The merged model and its tokenizer; a failed write is a ``CheckpointError`` naming the folder."""
    try:
        merged.save_pretrained(output_dir)
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(output_dir)
    except (OSError, RuntimeError) as err:
        raise trainer.reliability.save_error(f"the merged model to {output_dir}", output_dir, err) from err
