"""The reliability objects of one ``ORPOTrainer``, and what connects them to it.

The objects (``guard``, ``checkpoints``, ``signals``) know nothing of ``Trainer``; this class
builds them from the trainer's args and accelerator, passes each what it needs, and runs the
few steps the trainer's hooks delegate to it (``train``, ``create_optimizer``, ``training_step``,
``_save_checkpoint``).  What it needs of ``Trainer`` beyond the public API goes through
:mod:`~orpo.internals.private`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from accelerate.optimizer import AcceleratedOptimizer

from orpo.config.usage import UsageError
from orpo.internals import private
from orpo.models.loading import is_peft_model
from orpo.training.reliability import fit, preflight
from orpo.training.reliability.checkpoint import CheckpointError, remove_stale_staging
from orpo.training.reliability.commit import CheckpointCommitter, elect_committer, save_failure
from orpo.training.reliability.diagnose import Diagnosis
from orpo.training.reliability.guard import NonFiniteGuard
from orpo.training.reliability.loop_hooks import ReliabilityCallback
from orpo.training.reliability.optimizer import GatedOptimizer
from orpo.training.reliability.resume import LoopState, resolve_resume
from orpo.training.reliability.signals import SignalHandler
from orpo.training.reliability.stops import resume_advice

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from orpo.training.trainer import ORPOTrainer


class Reliability:
    """``guard`` (non-finite losses and gradients), ``checkpoints`` (atomic commits), ``signals``
    (SIGINT/SIGTERM), wired to one trainer after ``Trainer.__init__`` (they need its accelerator).

    Args:
        trainer: the trainer, after ``Trainer.__init__``; its reliability callback is added.
    """

    def __init__(self, trainer: ORPOTrainer) -> None:
        self.trainer = trainer
        args = trainer.args

        def model() -> torch.nn.Module:  # read when needed: model_init replaces it at train()
            assert trainer.model is not None, "Trainer.__init__ or train() sets the model"
            return trainer.model

        diagnosis = Diagnosis(
            dataset=lambda: trainer.train_dataset,
            model=model,
            rescore=lambda batch: trainer.scorer(model(), private.prepare_inputs(trainer, batch)).logps,
            loss=lambda batch: trainer.compute_loss(model(), private.prepare_inputs(trainer, batch)),
            windows=trainer.metric_windows,
            context=trainer.compute_loss_context_manager,
        )
        self.checkpoints = CheckpointCommitter(
            barrier=trainer.accelerator.wait_for_everyone, is_main=args.should_save, resume_hint=self.resume_hint
        )
        self.signals = SignalHandler(
            lambda: self.checkpoints.last_complete(trainer.args.output_dir or "."), self.resume_hint
        )
        self.guard = NonFiniteGuard(
            args.on_nonfinite,
            trainer.metric_windows,
            diagnosis,
            check_gradients=trainer.accelerator.scaler is None and not trainer.is_deepspeed_enabled,
            deepspeed=trainer.is_deepspeed_enabled,
            diagnose=args.world_size <= 1 and not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled),
            world_size=args.world_size,
            process_index=args.process_index,
            last_checkpoint=lambda: self.checkpoints.last,
        )
        self.resume: str | None = None
        #: The step this train() call started at (the resumed checkpoint's), and what it is checked against.
        self.first_step = 0
        self.fingerprint: dict[str, Any] = {}
        trainer.add_callback(
            ReliabilityCallback(self.guard, self.signals, self.restore_loop_state, args.device, args.world_size)
        )

    def before_train(self, resume_from_checkpoint: str | bool | None) -> str | None:
        """Checks before any compute; the verified checkpoint to resume from (None: start afresh).

        Args:
            resume_from_checkpoint: ``train()``'s argument (a folder, True for the newest, or None).

        Raises:
            ValueError: settings that train nothing, an unwritable output dir, a dataset smaller than a
                dropped batch, or a checkpoint that does not verify or fit the run.
        """
        trainer, args = self.trainer, self.trainer.args
        output_dir = args.output_dir
        assert output_dir is not None, "TrainingArguments.__post_init__ sets output_dir"
        preflight.check_training_amounts(args)
        if args.should_save:  # first: a partial save may be what fills the disk the checks below measure
            remove_stale_staging(output_dir)
        preflight.check_output_dir(output_dir)
        adapter_only = is_peft_model(trainer.model)
        need = preflight.checkpoint_size_estimate(trainer.model, adapter_only, not args.save_only_model)
        preflight.warn_if_disk_small(output_dir, need)
        per_step = args.per_device_train_batch_size * max(args.world_size, 1)
        preflight.check_batch_size(trainer.train_dataset, per_step, args.dataloader_drop_last)
        if args.world_size > 1:
            self.checkpoints.is_main = self._elect_committer(output_dir)
            if self.checkpoints.is_main:  # another node's committer: its own folder's leftovers
                remove_stale_staging(output_dir)
        self.resume = resolve_resume(resume_from_checkpoint, output_dir, args.world_size, args.process_index)
        self.fingerprint = fit.run_fingerprint(args, trainer.train_dataset)
        if self.resume is not None:
            logger.info("resuming from %s", self.resume)
            fit.check_kind(self.resume, adapter_only)
            fit.check_model(self.resume, getattr(trainer.model, "config", None))
            fit.warn_if_changed(self.resume, self.fingerprint)
        self.signals.reset()
        self.guard.reset()
        return self.resume

    @contextlib.contextmanager
    def load_errors_named(self) -> Iterator[None]:
        """Around ``Trainer.train``: a resumed checkpoint that does not load into the model or optimizer is one
        line saying so (:func:`~orpo.training.reliability.fit.describe_load_error`), not transformers' dump."""
        try:
            yield
        except (RuntimeError, ValueError) as err:
            summary = fit.describe_load_error(err, self.resume) if self.resume else None
            if summary is None:
                raise
            raise ValueError(summary) from err

    def save_error(self, what: str, directory: str, err: BaseException) -> CheckpointError:
        """A failed save outside a checkpoint (the final model, a merged one) as one line: what, why, the last
        complete checkpoint, how to resume.

        Args:
            what: what was being written ("the model to ...").
            directory: where.
            err: the error the save raised.
        """
        last = self.checkpoints.last_complete(str(self.trainer.args.output_dir))
        return CheckpointError(save_failure(what, directory, err, last, self.resume_hint()))

    def resume_hint(self) -> str:
        """How to resume this run: ``trainer.resume_command`` (the CLI sets it) or the Python call."""
        return resume_advice(self.trainer.resume_command)

    def _elect_committer(self, output_dir: str) -> bool:
        """Per filesystem, one process commits checkpoints; refused where no process saves there (the other
        nodes' files of an output dir that is not shared, without ``save_on_each_node``)."""
        import uuid

        from accelerate.utils import broadcast_object_list, gather_object

        args, accelerator = self.trainer.args, self.trainer.accelerator
        token = [uuid.uuid4().hex[:12]]
        broadcast_object_list(token, from_process=0)
        node_main = args.local_process_index == 0
        elected = elect_committer(output_dir, args.process_index, node_main, token[0], accelerator.wait_for_everyone)
        unsaved = gather_object([args.process_index if elected and not args.should_save else -1])
        orphans = [index for index in unsaved if index >= 0]
        if orphans:
            raise UsageError(
                f"output_dir {output_dir} is not shared between the nodes (process(es) {orphans} see a different "
                "folder than process 0), so their checkpoint files would never be completed: put output_dir on a "
                "shared filesystem or pass --save-on-each-node"
            )
        return elected

    def after_train(self) -> None:
        """Raise :class:`~orpo.training.reliability.TrainingInterrupted` if a signal ended the run early."""
        state = self.trainer.state
        self.signals.finish(state.global_step, state.max_steps, self.checkpoints.last)

    def gate(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer behind the guard's gate; as is under DeepSpeed (it steps inside backward) or when
        already gated (a second ``train()``: accelerate's wrapper holds the gated one).

        Args:
            optimizer: the optimizer Trainer created.
        """
        if self.trainer.is_deepspeed_enabled or isinstance(optimizer, (GatedOptimizer, AcceleratedOptimizer)):
            return optimizer
        return GatedOptimizer(optimizer, self.guard.allow_step)

    def end_micro_batch(self, loss: torch.Tensor, inputs: dict[str, Any], model: torch.nn.Module) -> None:
        """Hand a micro-batch's loss to the guard, and the model's parameters at the window's end.

        Args:
            loss: the micro-batch's loss.
            inputs: the micro-batch.
            model: the model trained.
        """
        window_end = private.is_window_end(self.trainer)
        self.guard.end_micro_batch(loss, inputs, model.parameters() if window_end else None)

    def save_checkpoint(self, trial: Any) -> None:
        """Trainer's checkpoint files and orpo's loop state, committed atomically, then pushed and rotated.

        Args:
            trial: the hyperparameter-search trial, as Trainer passes it.

        Raises:
            CheckpointError: the checkpoint could not be written.
        """
        trainer = self.trainer
        args, state = trainer.args, trainer.state
        run_dir = private.run_dir(trainer, trial)

        def write(staging: str) -> None:
            private.write_checkpoint(trainer, staging, run_dir, trial)
            tr_loss, last_logged = private.unlogged_loss(trainer)
            exported = trainer.metric_windows.export("train")
            loop = LoopState(state.global_step, tr_loss, last_logged, exported, self.guard.skipped)
            loop.save(staging, args.world_size, args.process_index)
            private.save_trainer_state(trainer, staging)
            if self.checkpoints.is_main:
                fit.write_fingerprint(staging, self.fingerprint)

        checkpoint = self.checkpoints.save(run_dir, state.global_step, write)
        private.finish_checkpoint(trainer, checkpoint, run_dir)

    def restore_loop_state(self) -> None:
        """At the start of a run: the step it starts at; resumed, the sums the checkpoint's steps had not
        logged yet."""
        trainer = self.trainer
        args = trainer.args
        self.first_step = trainer.state.global_step
        if self.resume is None:
            return
        loop = LoopState.load(self.resume, trainer.state.global_step, args.world_size, args.process_index)
        if loop is None:
            return
        private.restore_unlogged_loss(trainer, loop.tr_loss, loop.globalstep_last_logged)
        trainer.metric_windows.load("train", loop.metric_sums, args.device)
        self.guard.skipped = loop.skipped_batches
