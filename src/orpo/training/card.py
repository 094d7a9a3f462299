"""The model card (README.md) written next to every saved model and pushed with it.

What a reader of the hub page needs to reproduce or judge the run: the method (ORPO, with the paper),
the base model, the data (sources and row counts), the hyper-parameters, the final metrics, the health
verdict and the versions of the libraries that trained it.  Built from what the trainer holds, so a
checkpoint's card says what was known at that step.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orpo.models.sources import looks_like_hub_id

if TYPE_CHECKING:
    from orpo.training.trainer import ORPOTrainer

logger = logging.getLogger(__name__)

PAPER = "https://arxiv.org/abs/2403.07691"
CITATION = """@article{hong2024orpo,
  title   = {{ORPO: Monolithic Preference Optimization without Reference Model}},
  author  = {Jiwoo Hong and Noah Lee and James Thorne},
  journal = {arXiv preprint arXiv:2403.07691},
  year    = {2024}
}"""
#: Libraries whose versions the card records (the distribution names).
VERSIONED = ("orpo", "transformers", "torch", "peft", "datasets")
#: ORPOConfig fields shown as hyper-parameters, in this order.
HYPERPARAMETERS = (
    "beta",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "max_prompt_length",
    "max_completion_length",
    "nll_scope",
    "seed",
)


@dataclass
class CardFacts:
    """Everything the card shows, gathered first so it can be tested without rendering.

    Attributes:
        model_name: the card's title (and the hub metadata's ``model_name``).
        base_model: the hub id or path the model was fine-tuned from; None: unknown.
        adapter: whether the saved model is a LoRA (PEFT) adapter.
        data: (source, rows in, rows kept) per training data source; row counts None when streamed.
        hyperparameters: name -> value of :data:`HYPERPARAMETERS` (and the LoRA settings).
        metrics: the last logged value of each metric (:func:`final_metrics`).
        health: the health check's verdict, one line per finding; empty before the run ends.
        versions: distribution name -> version of :data:`VERSIONED`.
        tags: the hub tags.
    """

    model_name: str
    base_model: str | None = None
    adapter: bool = False
    data: list[tuple[str, int | None, int | None]] = field(default_factory=list)  # (source, rows in, rows kept)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    health: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)


def versions(names: Sequence[str] = VERSIONED) -> dict[str, str]:
    """Installed version of each distribution (``"not installed"`` for one that is not).

    Args:
        names: distribution names, as ``pip`` knows them.
    """
    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def base_model_of(model: Any) -> str | None:
    """The hub id or local path the model (or its adapter) was loaded from.

    Args:
        model: a model, or a PEFT model (its adapter config's base model wins).

    Returns:
        The name, or None where the model does not record one.
    """
    from orpo.models.loading import is_peft_model

    if is_peft_model(model):
        config = model.peft_config.get(model.active_adapter)
        if config is not None and config.base_model_name_or_path:
            return str(config.base_model_name_or_path)
        model = model.get_base_model()
    name = getattr(model, "name_or_path", None)  # PreTrainedModel's; absent on a plain nn.Module
    return str(name) if name else None


def final_metrics(history: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The last logged value of each metric (train loss, eval metrics, ORPO's rewards and accuracies).

    Steps, epochs, learning rate, gradient norm, runtimes and throughputs are left out.

    Args:
        history: log entries, as in ``trainer.state.log_history``.
    """
    skip = {"epoch", "step", "total_flos", "learning_rate", "grad_norm"}
    out: dict[str, float] = {}
    for log in history:
        for key, value in log.items():
            if key not in skip and isinstance(value, int | float) and not key.endswith(("_runtime", "_per_second")):
                out[key] = float(value)
    return out


def gather(trainer: ORPOTrainer, model_name: str, extra_tags: Sequence[str] = ()) -> CardFacts:
    """The facts of ``trainer``'s run as it stands now.

    Args:
        trainer: the run's trainer (its model, arguments, log history, data reports and health callback).
        model_name: the card's title.
        extra_tags: hub tags beyond orpo's own (``orpo``, ``transformers``; ``peft``, ``lora`` for an adapter).
    """
    from orpo.models.loading import is_peft_model
    from orpo.training.health import HealthCallback

    args = trainer.args
    model: Any = trainer.model
    facts = CardFacts(model_name=model_name, base_model=base_model_of(model), adapter=is_peft_model(model))
    facts.data = data_rows(trainer)
    facts.hyperparameters = {name: getattr(args, name) for name in HYPERPARAMETERS}
    if facts.adapter:
        lora = model.peft_config.get(model.active_adapter)
        for name in ("r", "lora_alpha", "lora_dropout", "use_dora", "use_rslora"):
            if lora is not None and hasattr(lora, name):  # LoRA fields; other PEFT methods lack them
                facts.hyperparameters["lora_r" if name == "r" else name] = getattr(lora, name)
    facts.metrics = final_metrics(trainer.state.log_history)
    health = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, HealthCallback)), None)
    if health is not None and health.report:
        facts.health = [finding.line() for finding in health.report]
    facts.versions = versions()
    tags = ["orpo", "transformers", *(["peft", "lora"] if facts.adapter else []), *extra_tags]
    facts.tags = list(dict.fromkeys(tags))
    return facts


def data_rows(trainer: ORPOTrainer) -> list[tuple[str, int | None, int | None]]:
    """(source, rows in, rows kept) of the training data: per source when several were mixed.

    Args:
        trainer: the run's trainer; its ``data_reports["train"]`` is read (none: an empty list).
    """
    report = trainer.data_reports.get("train")
    if report is None:
        return []
    if report.per_source:
        return [(name, rows_in, kept) for name, (rows_in, kept) in report.per_source.items()]
    name = trainer.train_source or "in-memory dataset"
    return [(name, report.rows_in, report.rows_out)]


def _hub_dataset(source: str) -> bool:

    return "/" in source and looks_like_hub_id(source) and not Path(source).expanduser().exists()


def render(facts: CardFacts) -> str:
    """The README.md text: hub metadata (YAML) and the body.

    Args:
        facts: what the card shows (:func:`gather`).
    """
    from huggingface_hub import ModelCardData

    metadata = ModelCardData(
        base_model=facts.base_model if facts.base_model and not Path(facts.base_model).is_absolute() else None,
        library_name="peft" if facts.adapter else "transformers",
        tags=facts.tags,
        datasets=[source for source, _, _ in facts.data if _hub_dataset(source)] or None,
        model_name=facts.model_name,
    )
    lines = [f"---\n{metadata.to_yaml()}\n---", f"# {facts.model_name}", ""]
    kind = "A LoRA adapter" if facts.adapter else "A model"
    base = f" `{facts.base_model}`" if facts.base_model else " an unnamed base model"
    lines += [
        f"{kind} fine-tuned from{base} with [ORPO]({PAPER}) (Odds Ratio Preference Optimization; Hong, Lee & "
        "Thorne, 2024) using [orpo](https://pypi.org/project/orpo/).",
        "",
        "## Training data",
        "",
    ]
    if facts.data:
        lines += ["| source | rows | rows trained on |", "|---|---|---|"]
        lines += [f"| `{source}` | {_count(rows)} | {_count(kept)} |" for source, rows, kept in facts.data]
    else:
        lines.append("Not recorded.")
    lines += ["", "## Hyper-parameters", "", *_table(facts.hyperparameters), "", "## Results", ""]
    lines += _table(facts.metrics) if facts.metrics else ["No metrics logged yet."]
    lines += ["", "## Health check", ""]
    lines += [f"- {line}" for line in facts.health] if facts.health else ["Not run (the run has not finished)."]
    lines += ["", "## Versions", "", *_table(facts.versions), "", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def _count(value: int | None) -> str:
    return "streamed (not counted up front)" if value is None else str(value)


def _table(values: dict[str, Any]) -> list[str]:
    def shown(value: Any) -> str:
        if isinstance(value, Enum):  # TrainingArguments' lr_scheduler_type
            return str(value.value)
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    return ["| name | value |", "|---|---|", *(f"| {key} | {shown(value)} |" for key, value in values.items())]


def write_model_card(
    trainer: ORPOTrainer, directory: str, model_name: str | None = None, tags: Sequence[str] = ()
) -> str:
    """Write README.md into ``directory``; returns its path.

    Args:
        trainer: the run's trainer (see :func:`gather`).
        directory: the saved model's folder; created if missing.
        model_name: the card's title; None: the folder's name.
        tags: extra hub tags.
    """
    from huggingface_hub import ModelCard

    name = model_name or Path(directory).resolve().name
    path = Path(directory) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    ModelCard(render(gather(trainer, name, tags))).save(str(path))
    return str(path)
