"""Mixture-of-experts models: the router's load-balancing loss, over the real tokens of any layout.

A transformers MoE causal LM (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GraniteMoE...) computes its
auxiliary loss in ``forward`` from the router logits of every layer and the ``attention_mask``.
That cannot serve orpo's row layouts: their ``attention_mask`` is the per-segment marker
(:data:`orpo.scoring.attention.SEGMENT_MASK`), on which transformers'
``load_balancing_loss_func`` fails, and a row has no mask over its own trailing padding.  So
scoring always runs MoE models with ``output_router_logits=False`` (:func:`forward_options`),
:class:`RouterCapture` keeps the router logits through forward hooks, and :class:`RouterLoss`
applies the model's own ``load_balancing_loss_func`` to them with a mask of the forward's real
tokens:

* padded rows: the attention mask, as transformers passes it;
* a padding-free row: every sequence token, each once; the row's trailing padding is left out;
* a shared-prompt row: each prompt once per pair (one forward position serves both completions),
  then the chosen and the rejected tokens.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from orpo.scoring.layouts import Layout, layout_of
from orpo.scoring.model_view import unwrap
from orpo.scoring.packing import ROW_TOKENS_KEY

if TYPE_CHECKING:
    from orpo.scoring.logps import TokenScores
    from orpo.scoring.scorer import TokenScorer

logger = logging.getLogger(__name__)

_CAPTURE_ATTRIBUTE = "_orpo_router_capture"


@dataclass
class RouterCapture:
    """Forward hooks on a model's router modules: while ``armed``, each call's gate logits
    (``[tokens, experts]``) are kept in call order.

    Installed once per model (hooks added per call would be missed by a compiled model, as for
    :class:`orpo.scoring.fused.HeadCapture`).  Disarmed outside scoring, so the recomputation of
    activation checkpointing in backward adds nothing.

    Attributes:
        modules: the router modules hooked, in the order transformers records their outputs.
        index: which element of a router's output tuple holds the gate logits.
        num_experts: the model's routed experts (``num_experts``).
        top_k: experts per token (``num_experts_per_tok``).
        loss_function: the ``load_balancing_loss_func`` of the model's transformers module.
        armed: whether calls are recorded now.
        logits: the gate logits recorded while armed, in call order.
    """

    modules: tuple[torch.nn.Module, ...]
    index: int
    num_experts: int
    top_k: int
    loss_function: Callable[..., Any]
    armed: bool = False
    logits: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, _module: torch.nn.Module, _args: Any, output: Any) -> None:
        if self.armed:
            self.logits.append(output[self.index] if isinstance(output, tuple | list) else output)

    def last_forward(self) -> tuple[torch.Tensor, ...]:
        """The gate logits of the last forward pass: one per router module (each runs once per forward)."""
        gates = tuple(self.logits[-len(self.modules) :])
        if len(gates) != len(self.modules) or len({gate.shape[0] for gate in gates}) != 1:
            raise RuntimeError(
                f"expected one call of each of the {len(self.modules)} router modules per forward pass, "
                f"got {len(self.logits)} calls"
            )
        return gates

    @classmethod
    def of(cls, model: torch.nn.Module) -> RouterCapture | None:
        """The capture of ``model`` (installed on first use), or None when it has no routed experts:
        no router output transformers records, or no ``load_balancing_loss_func`` beside its class.

        Args:
            model: the model, wrapped or not (PEFT included); the capture lives on its transformers model.
        """
        pretrained = unwrap(model, to_transformers=True)
        if _CAPTURE_ATTRIBUTE in pretrained.__dict__:
            return pretrained.__dict__[_CAPTURE_ATTRIBUTE]
        capture = cls._build(pretrained)
        if capture is not None:
            for module in capture.modules:
                module.register_forward_hook(capture)
        pretrained.__dict__[_CAPTURE_ATTRIBUTE] = capture
        return capture

    @classmethod
    def _build(cls, pretrained: torch.nn.Module) -> RouterCapture | None:
        from orpo.internals.private import router_recorder

        recorder = router_recorder(pretrained)
        loss_function = getattr(sys.modules[type(pretrained).__module__], "load_balancing_loss_func", None)
        experts = getattr(pretrained, "num_experts", None)
        top_k = getattr(pretrained, "num_experts_per_tok", None)
        if recorder is None or loss_function is None or not experts or not top_k:
            return None
        target, index, layer_name = recorder
        modules = tuple(
            module
            for name, module in pretrained.named_modules()
            if issubclass(type(module), target) and (layer_name is None or f".{layer_name.strip('.')}." in f".{name}.")
        )
        if not modules:
            return None
        return cls(modules, index, int(experts), int(top_k), loss_function)


def has_router(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a mixture-of-experts model orpo can add the load-balancing loss of.

    Args:
        model: the model, wrapped or not (installs its :class:`RouterCapture` if it has routers).
    """
    return RouterCapture.of(model) is not None


_FLAG_CACHE: dict[type, bool] = {}


def forward_options(model: torch.nn.Module) -> dict[str, Any]:
    """Keyword arguments of every scoring forward: no KV cache, and for a model that takes
    ``output_router_logits``, False: its own load-balancing loss would read the attention mask,
    which a row layout does not have (:class:`RouterLoss` computes it instead).

    Args:
        model: the model about to run, wrapped or not.
    """
    cls = type(unwrap(model, to_transformers=True))
    if cls not in _FLAG_CACHE:
        _FLAG_CACHE[cls] = "output_router_logits" in inspect.signature(cls.forward).parameters
    return {"use_cache": False, **({"output_router_logits": False} if _FLAG_CACHE[cls] else {})}


def real_token_mask(batch: dict[str, Any], ran_as_row: bool) -> torch.Tensor | None:
    """``[rows, tokens]`` 1/0 over the tokens of the forward that scored ``batch``: which are real.

    None for a padded batch without an attention mask (every token counts, as in transformers).

    Args:
        batch: the collated batch.
        ran_as_row: whether a row batch ran as its row (False: as its padded batch).
    """
    layout = layout_of(batch)
    if layout is Layout.PADDED:
        return batch.get("attention_mask")
    if not ran_as_row:  # run as its padded batch (orpo.scoring.layouts.padded_of)
        return batch["padded_attention_mask"]
    ids = batch["input_ids"]
    mask = torch.zeros(ids.shape, dtype=torch.long, device=ids.device)
    mask[:, : int(batch[ROW_TOKENS_KEY])] = 1  # a host int: the padding is at the row's end only
    return mask


@dataclass(frozen=True)
class RouterLoss:
    """The load-balancing term of the ORPO loss: ``coef * aux_loss``, TRL's ORPOTrainer's.

    ``enabled`` and ``coef`` are the trainer's options (``output_router_logits``,
    ``router_aux_loss_coef``); None takes the model config's value, as TRL reads it.

    Attributes:
        enabled: whether the term is added (``output_router_logits``); None: the model config's.
        coef: the term's weight (``router_aux_loss_coef``); None: the model config's (0 if it has none).
    """

    enabled: bool | None = None
    coef: float | None = None

    def resolve(self, model: torch.nn.Module) -> tuple[bool, float]:
        """(whether the term is on for ``model``, its coefficient); a dense model asked for it is an error.

        Args:
            model: the model trained, wrapped or not.

        Raises:
            ValueError: the term is on and ``model`` has no router orpo can capture.
        """
        config = getattr(unwrap(model, to_transformers=True), "config", None)
        enabled = self.enabled if self.enabled is not None else bool(getattr(config, "output_router_logits", False))
        coef = self.coef
        if coef is None:  # JetMoe names it aux_loss_coef
            coef = getattr(config, "router_aux_loss_coef", getattr(config, "aux_loss_coef", 0.0))
        if enabled and not has_router(model):
            raise ValueError(
                f"output_router_logits: {type(unwrap(model, to_transformers=True)).__name__} has no router whose logits transformers "
                "records (not a mixture-of-experts causal LM orpo supports); leave output_router_logits off"
            )
        return enabled, float(coef)

    def score(
        self, scorer: TokenScorer, model: torch.nn.Module, batch: dict[str, Any]
    ) -> tuple[TokenScores, torch.Tensor | None]:
        """``scorer(model, batch)`` and, when the term is on, the load-balancing loss of that forward
        over its real tokens (float32, differentiable through the router logits).

        Args:
            scorer: the trainer's token scorer.
            model: the model to run.
            batch: the collated batch, any layout.

        Returns:
            ``(scores, aux_loss)``; ``aux_loss`` is None when the term is off.
        """
        capture = RouterCapture.of(model)
        if capture is None or not self.resolve(model)[0]:
            return scorer(model, batch), None
        capture.logits.clear()
        capture.armed = True
        try:
            scores = scorer(model, batch)
            gates = capture.last_forward()
        finally:
            capture.armed = False
            capture.logits.clear()
        layout = layout_of(batch)
        ran_as_row = layout is not Layout.PADDED and bool(
            scorer.uses_packing if layout is Layout.PADDING_FREE else scorer.uses_shared_prompt
        )
        mask = real_token_mask(batch, ran_as_row)
        if mask is not None and mask.numel() != gates[0].shape[0]:
            raise RuntimeError(
                f"router logits cover {gates[0].shape[0]} tokens, the batch's {layout.value} mask {mask.numel()}"
            )
        aux = capture.loss_function(gates, capture.num_experts, capture.top_k, mask)
        return scores, torch.as_tensor(aux, dtype=torch.float32, device=gates[0].device)


def apply_router_options(model: torch.nn.Module, enabled: bool | None, coef: float | None) -> None:
    """Write the router options into the config of a model orpo loaded itself (never a caller's
    model object), so its saved config says how it was trained; keys the config lacks are left out.

    Args:
        model: a model orpo loaded itself.
        enabled: ``output_router_logits``; None: leave the config's.
        coef: ``router_aux_loss_coef``; None: leave the config's.
    """
    config = getattr(unwrap(model, to_transformers=True), "config", None)
    if config is None:
        return
    if enabled is not None and hasattr(config, "output_router_logits"):
        config.output_router_logits = enabled
    if coef is not None and hasattr(config, "router_aux_loss_coef"):
        config.router_aux_loss_coef = coef
