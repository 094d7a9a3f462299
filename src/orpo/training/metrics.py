"""The ORPO metrics of a logging window: sums per micro-batch, averages when logged.

Sums (not per-step averages) are kept so a logged value is the average over every pair and
token of the window, whatever the batch sizes, and so processes can be reduced exactly.  The
logged ``loss`` is built from the same window (:func:`window_loss`), so
``loss == nll_loss - beta * log_odds_ratio`` holds for every logged entry (plus
``router_aux_loss_coef * aux_loss`` for a mixture-of-experts model with ``output_router_logits``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from orpo.loss import ORPOLossOutput, PairLogps
    from orpo.scoring.logps import TokenScores

logger = logging.getLogger(__name__)

#: The metrics logged at every logging step (``eval_``-prefixed during evaluation).
METRIC_NAMES = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "nll_loss",
    "log_odds_ratio",
    "log_odds_chosen",
)
#: Logged besides METRIC_NAMES for a mixture-of-experts model with ``output_router_logits``: the
#: router's load-balancing loss, averaged over the window's micro-batches (orpo.scoring.moe).
AUX_LOSS = "aux_loss"


def window_loss(metrics: dict[str, float], beta: float, aux_coef: float = 0.0) -> float:
    """The ORPO loss over a logging window: its token-averaged NLL plus beta times its pair-averaged
    odds-ratio term, weighted as one accumulation window weights them (so micro-batching does not
    change it, and it agrees with the logged ``nll_loss`` and ``log_odds_ratio``), plus ``aux_coef``
    times the logged ``aux_loss`` where there is one.

    Args:
        metrics: the window's averages, as :meth:`MetricWindows.pop` returns them.
        beta: the odds-ratio term's weight (``ORPOConfig.beta``).
        aux_coef: the load-balancing loss's weight; 0 without one.
    """
    loss = metrics["nll_loss"] - beta * metrics["log_odds_ratio"]
    return loss + aux_coef * metrics[AUX_LOSS] if AUX_LOSS in metrics else loss


class MetricWindows:
    """Per-mode ("train", "eval") sums since the last log, kept on the device: :meth:`record` never
    reads a value back (no host sync in a training step), :meth:`pop` reads them once per log.

    ``sums`` has the structure checkpoints save and restore (see :mod:`orpo.training.reliability`):
    ``{mode: defaultdict(float, {key: float64 tensor})}``.
    """

    def __init__(self) -> None:
        self.sums: dict[str, defaultdict[str, Any]] = {"train": defaultdict(float), "eval": defaultdict(float)}

    def reset(self, mode: str) -> None:
        """Forget ``mode``'s sums ("train" or "eval")."""
        self.sums[mode] = defaultdict(float)

    # ---- the contract the reliability objects rely on (guard, diagnostics, checkpoints) ----
    def snapshot(self, mode: str) -> dict[str, Any]:
        """A copy of ``mode``'s sums, to put back with :meth:`restore` or :meth:`keep_if`.

        Args:
            mode: "train" or "eval".
        """
        return dict(self.sums[mode])

    def restore(self, mode: str, snapshot: dict[str, Any]) -> None:
        """Put back the sums of a :meth:`snapshot` (e.g. after a diagnostic re-run).

        Args:
            mode: "train" or "eval".
            snapshot: what :meth:`snapshot` returned.
        """
        self.sums[mode] = defaultdict(float, snapshot)

    def keep_if(self, mode: str, snapshot: dict[str, Any], keep: torch.Tensor) -> None:
        """Keep what was recorded since ``snapshot`` only where the 0-d bool ``keep`` is True.

        A ``torch.where`` on device, so leaving a non-finite micro-batch out costs no host sync.

        Args:
            mode: "train" or "eval".
            snapshot: what :meth:`snapshot` returned before the micro-batch was recorded.
            keep: 0-d bool tensor, on any device.
        """
        store = self.sums[mode]
        for key in list(store):
            new = store[key]
            if torch.is_tensor(new):
                before = snapshot.get(key, 0.0)
                # a Python number is filled in on the device: torch.as_tensor(number, device=...) would copy and wait
                old = before.to(new) if torch.is_tensor(before) else torch.full_like(new, before)
                store[key] = torch.where(keep.to(new.device), new, old)

    def export(self, mode: str) -> dict[str, float]:
        """``mode``'s sums as plain floats (saved in checkpoints for an exact resume).

        Args:
            mode: "train" or "eval".
        """
        return {key: float(value) for key, value in self.sums[mode].items()}

    def load(self, mode: str, values: dict[str, float], device: Any) -> None:
        """Sums saved by :meth:`export`, as float64 tensors on ``device``.

        Args:
            mode: "train" or "eval".
            values: what :meth:`export` returned.
            device: where the sums are kept.
        """
        self.sums[mode] = defaultdict(
            float, {key: torch.tensor(value, dtype=torch.float64, device=device) for key, value in values.items()}
        )

    def record(
        self,
        mode: str,
        loss: ORPOLossOutput,
        pairs: PairLogps,
        scores: TokenScores,
        aux_loss: torch.Tensor | None = None,
    ) -> None:
        """Add one micro-batch's sums, so logged metrics are averages over the whole logging window
        (``aux_loss``: the router's load-balancing loss of a MoE model, averaged per micro-batch).

        Args:
            mode: "train" or "eval".
            loss: the micro-batch's :func:`orpo.loss.orpo_loss` output.
            pairs: its :func:`orpo.loss.pair_logps`.
            scores: its token scores (the mean logits).
            aux_loss: the router's load-balancing loss of the micro-batch, or None.
        """
        odds = loss.odds
        valid = pairs.valid.float()
        completion = pairs.completion_mask
        rows = pairs.valid.shape[0]  # chosen rows 0..B-1, rejected rows B..2B-1
        with torch.no_grad():
            lm = scores.logit_means * completion
            sums = {
                "pairs": valid.sum(),
                "pairs/excluded": (~pairs.valid).sum(),  # an empty completion: counted here, reported by pop()
                # average log-probs themselves, not rewards / beta: those are 0/0 when beta == 0
                "logps/chosen": (pairs.chosen.mean.detach() * valid).sum(),
                "logps/rejected": (pairs.rejected.mean.detach() * valid).sum(),
                "rewards/chosen": odds.chosen_rewards.sum(),
                "rewards/rejected": odds.rejected_rewards.sum(),
                # on the log-probs, so it means something at beta == 0; for beta > 0 it is the rewards' comparison
                "rewards/accuracies": ((pairs.chosen.mean > pairs.rejected.mean).float() * valid).sum(),
                "rewards/margins": (odds.chosen_rewards - odds.rejected_rewards).sum(),
                "log_odds_ratio": odds.log_sigmoid_odds.detach().sum(),
                "log_odds_chosen": odds.log_odds.detach().sum(),
                "logits/chosen": lm[:rows].sum(),
                "logits/rejected": lm[rows:].sum(),
                "tokens/chosen": completion[:rows].sum(),
                "tokens/rejected": completion[rows:].sum(),
                "nll/sum": -pairs.nll_logp_sum.detach(),
                "nll/tokens": pairs.nll_mask.sum(),
            }
            if aux_loss is not None:
                sums["aux/sum"] = aux_loss.detach()
                sums["aux/batches"] = torch.ones((), device=aux_loss.device)
            store = self.sums[mode]
            for key, value in sums.items():
                store[key] = store[key] + value.detach().double()

    def pop(
        self, mode: str, device: Any, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, float]:
        """The window's averages (``METRIC_NAMES``), summed over processes with ``reduce``; starts a new window.

        Args:
            mode: "train" or "eval".
            device: where the sums are stacked (and reduced).
            reduce: sums a tensor over processes; None: one process.

        Returns:
            The averages by name (plus ``aux_loss`` for a MoE model), or ``{}`` when nothing was recorded.
        """
        store = self.sums[mode]
        if not store:
            return {}
        keys = sorted(store)
        values = torch.stack([torch.as_tensor(store[k], dtype=torch.float64, device=device) for k in keys])
        if reduce is not None:
            values = reduce(values)
        totals = dict(zip(keys, values.tolist(), strict=True))
        self.sums[mode] = defaultdict(float)
        excluded = int(totals.get("pairs/excluded", 0.0))
        if excluded:
            where = "since the last log" if mode == "train" else "in this evaluation"
            logger.warning("%d pair(s) %s have an empty completion and are excluded", excluded, where)
        pairs = max(totals["pairs"], 1.0)
        metrics = {
            name: totals[name] / pairs
            for name in (
                "logps/chosen",
                "logps/rejected",
                "rewards/chosen",
                "rewards/rejected",
                "rewards/accuracies",
                "rewards/margins",
                "log_odds_ratio",
                "log_odds_chosen",
            )
        }
        metrics["logits/chosen"] = totals["logits/chosen"] / max(totals["tokens/chosen"], 1.0)
        metrics["logits/rejected"] = totals["logits/rejected"] / max(totals["tokens/rejected"], 1.0)
        metrics["nll_loss"] = totals["nll/sum"] / max(totals["nll/tokens"], 1.0)
        out = {name: metrics[name] for name in METRIC_NAMES}
        if totals.get("aux/batches"):
            out[AUX_LOSS] = totals["aux/sum"] / totals["aux/batches"]
        return out
