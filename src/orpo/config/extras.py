"""Optional packages and hardware: which options need what, checked before any data or model is loaded.

Without these checks a missing package or a missing GPU shows up late (after the data is tokenised) and in
another library's words: ``--deepspeed`` without deepspeed printed "No package metadata was found for The
'deepspeed>=0.9.3' distribution was not found ...", ``--parallelism-config`` on one process "environment
variable RANK expected, but not set".  Two tables say it once: :data:`PACKAGES` (package -> how to install
it, the pip extra of orpo where there is one) and :data:`REQUIREMENTS` (option -> the package, hardware or
processes it needs).  :func:`check_requirements` turns the first unmet row into one
:class:`~orpo.config.usage.UsageError` naming the option and what it needs.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from orpo.config.usage import UsageError


@dataclass(frozen=True)
class Package:
    """An optional package: its pip name, the modules any one of which provides it, orpo's extra for it."""

    name: str
    modules: tuple[str, ...]
    extra: str | None = None

    @property
    def install(self) -> str:
        return f"pip install 'orpo[{self.extra}]'" if self.extra else f"pip install {self.name}"


def _packages(*rows: Package) -> dict[str, Package]:
    return {row.name: row for row in rows}


#: Every optional package an option can need, by pip name (extras as declared in pyproject.toml).
PACKAGES: dict[str, Package] = _packages(
    Package("deepspeed", ("deepspeed",), "deepspeed"),
    Package("bitsandbytes", ("bitsandbytes",), "gpu"),
    Package("liger-kernel", ("liger_kernel",), "gpu"),
    Package("flash-attn", ("flash_attn",), "flash"),
    Package("pillow", ("PIL",), "vision"),
    Package("zstandard", ("zstandard",), "zstd"),  # .zst data files (checked when such a file is read)
    Package("tensorboard", ("tensorboard", "tensorboardX"), "tensorboard"),  # transformers takes either
    Package("wandb", ("wandb",), "wandb"),
    Package("mlflow", ("mlflow",)),
    Package("comet_ml", ("comet_ml",)),
    Package("clearml", ("clearml",)),
    Package("neptune", ("neptune",)),
    Package("dvclive", ("dvclive",)),
    Package("codecarbon", ("codecarbon",)),
    Package("swanlab", ("swanlab",)),
    Package("trackio", ("trackio",)),
    Package("torchao", ("torchao",)),
    Package("galore-torch", ("galore_torch",)),
    Package("apollo-torch", ("apollo_torch",)),
    Package("lomo-optim", ("lomo_optim",)),
    Package("schedulefree", ("schedulefree",)),
    Package("grokadamw", ("grokadamw",)),
    Package("torch-optimi", ("optimi",)),
    Package("torchdistx", ("torchdistx",)),
)

#: ``report_to`` tracker -> its package
TRACKERS: dict[str, str] = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "clearml": "clearml",
    "neptune": "neptune",
    "dvclive": "dvclive",
    "codecarbon": "codecarbon",
    "swanlab": "swanlab",
    "trackio": "trackio",
}

#: ``optim`` name prefix -> its package (transformers' OptimizerNames; the first matching prefix wins)
OPTIMIZERS: tuple[tuple[str, str], ...] = (
    ("adamw_torch_4bit", "torchao"),
    ("adamw_torch_8bit", "torchao"),
    ("galore_", "galore-torch"),
    ("apollo_", "apollo-torch"),
    ("lomo", "lomo-optim"),
    ("adalomo", "lomo-optim"),
    ("schedule_free_", "schedulefree"),
    ("grokadamw", "grokadamw"),
    ("stable_adamw", "torch-optimi"),
    ("adamw_anyprecision", "torchdistx"),
    ("adamw_bnb", "bitsandbytes"),
    ("adamw_8bit", "bitsandbytes"),
    ("ademamix", "bitsandbytes"),
    ("lion_", "bitsandbytes"),
    ("paged_", "bitsandbytes"),
    ("rmsprop_bnb", "bitsandbytes"),
)


def is_installed(package: str) -> bool:
    """Whether ``package`` can be imported (looked up, not imported: importing deepspeed takes seconds)."""
    return any(_find(module) for module in PACKAGES[package].modules)


def _find(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or a module with no spec
        return False


def missing_package(what: str, package: str) -> UsageError:
    """``"<what> needs <package>: pip install 'orpo[extra]'"``."""
    return UsageError(f"{what} needs {package}: {PACKAGES[package].install}")


def require(what: str, package: str) -> None:
    """Raise :func:`missing_package`'s error unless ``package`` is installed."""
    if not is_installed(package):
        raise missing_package(what, package)


# ---------------------------------------------------------------------------------------
# Hardware and processes
# ---------------------------------------------------------------------------------------


def world_size() -> int:
    """Processes of this run as the launcher (torchrun, accelerate launch) says; 1 when not launched."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def has_accelerator() -> bool:
    """A CUDA, XPU, MPS... device: what pinned host memory needs."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return bool(accelerator.is_available())
    return has_cuda()  # pragma: no cover - torch < 2.6


def has_bf16() -> bool:
    """transformers' own test for ``bf16`` without ``use_cpu`` (a bf16 GPU, or XLA)."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    return bool(is_torch_bf16_gpu_available() or is_torch_xla_available())


def has_tf32() -> bool:
    from transformers.utils import is_torch_tf32_available

    return bool(is_torch_tf32_available())


#: hardware need -> (test, how the message says it)
HARDWARE: dict[str, tuple[Callable[[], bool], str]] = {
    "cuda": (has_cuda, "a CUDA GPU (none found)"),
    "accelerator": (has_accelerator, "a GPU or other accelerator (none found)"),
    "bf16": (has_bf16, "a GPU with bf16 (none found)"),
    "tf32": (has_tf32, "an NVIDIA Ampere or newer GPU (none found)"),
}

# ---------------------------------------------------------------------------------------
# Requirements: option -> what it needs
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    """What an option needs when ``applies(values)``: hardware first, then several processes, then a package.

    ``option(values)`` is how the message names the option (with its value where that matters).
    """

    option: Callable[[Mapping[str, Any]], str]
    applies: Callable[[Mapping[str, Any]], bool]
    package: Callable[[Mapping[str, Any]], str | None] = lambda values: None
    hardware: str | None = None
    #: what to do instead on this machine, when the hardware is missing
    remedy: str = "drop it on this machine"
    processes: Callable[[Mapping[str, Any]], int] = lambda values: 1
    #: how to start several processes for it (accelerate launch config)
    launch: str = ""
    #: "resolve": checked before ``TrainingArguments`` is built, whose own check would fail in other words;
    #: "run": at the start of the run engine (``resolve`` maps such a setting on any machine)
    stage: str = "run"


def _flag(name: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda values: f"--{name.replace('_', '-')}"


def _flag_value(name: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda values: f"--{name.replace('_', '-')} {getattr(values.get(name), 'value', values.get(name))}"


def _set(name: str) -> Callable[[Mapping[str, Any]], bool]:
    """The field is on: true, a non-empty text or list (``fsdp: "full_shard auto_wrap"``)."""
    return lambda values: values.get(name) not in (None, False, "", [], {})


def optimizer_package(optim: Any) -> str | None:
    name = str(getattr(optim, "value", optim) or "")
    return next((package for prefix, package in OPTIMIZERS if name.startswith(prefix)), None)


def _parallel_size(values: Mapping[str, Any]) -> int:
    """Processes a ``parallelism_config`` spans: the product of its sizes."""
    config = values.get("parallelism_config")
    if config is None:
        return 1
    total = 1
    for name in ("dp_replicate_size", "dp_shard_size", "tp_size", "cp_size", "sp_size"):
        size = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
        total *= int(size or 1)
    return total


def _offloads(values: Mapping[str, Any]) -> bool:
    """Activation checkpointing with ``offload``: saved activations in pinned host memory."""
    on = values.get("activation_checkpointing") or values.get("gradient_checkpointing")
    kwargs = values.get("activation_checkpointing_kwargs") or values.get("gradient_checkpointing_kwargs")
    return bool(on) and isinstance(kwargs, Mapping) and bool(kwargs.get("offload"))


def _fsdp_xla(values: Mapping[str, Any]) -> bool:
    config = values.get("fsdp_config")
    return isinstance(config, Mapping) and bool(config.get("xla"))


def _bf16(values: Mapping[str, Any]) -> bool:
    return bool(values.get("bf16") or values.get("bf16_full_eval")) and not values.get("use_cpu")


#: Every option that needs a package, hardware or several processes (tested row by row).
REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement(_flag("deepspeed"), _set("deepspeed"), package=lambda v: "deepspeed", stage="resolve"),
    Requirement(
        _flag_value("optim"),
        lambda v: optimizer_package(v.get("optim")) is not None,
        package=lambda v: optimizer_package(v.get("optim")),
    ),
    Requirement(
        _flag_value("quantization"),
        _set("quantization"),
        package=lambda v: "bitsandbytes",
        hardware="cuda",
        remedy="train without --quantization on this machine",
    ),
    Requirement(
        _flag("use_liger_kernel"),
        _set("use_liger_kernel"),
        package=lambda v: "liger-kernel",
        hardware="cuda",
        remedy="train without --use-liger-kernel on this machine",
    ),
    Requirement(
        _flag_value("attn_implementation"),
        lambda v: v.get("attn_implementation") == "flash_attention_2",
        package=lambda v: "flash-attn",
        hardware="cuda",
        remedy="use --attn-implementation sdpa on this machine",
    ),
    Requirement(_flag("image_column"), _set("image_column"), package=lambda v: "pillow"),
    Requirement(
        lambda v: "--activation-checkpointing-kwargs offload",
        _offloads,
        hardware="accelerator",
        remedy="drop offload from --activation-checkpointing-kwargs on this machine",
    ),
    Requirement(
        _flag("bf16"),
        _bf16,
        hardware="bf16",
        remedy="add --use-cpu to train in bf16 on the CPU, or drop --bf16 (float32)",
        stage="resolve",
    ),
    Requirement(
        _flag("tf32"),
        lambda v: v.get("tf32") is True,
        hardware="tf32",
        remedy="drop --tf32 on this machine",
        stage="resolve",
    ),
    Requirement(
        _flag("fsdp"),
        lambda v: _set("fsdp")(v) and not _fsdp_xla(v),
        processes=lambda v: 2,
        launch='accelerate launch --config_file "$(orpo config path fsdp)" -m orpo train ...',
    ),
    Requirement(
        lambda v: f"--parallelism-config (size {_parallel_size(v)})",
        lambda v: _parallel_size(v) > 1,
        processes=_parallel_size,
        launch="torchrun --nproc-per-node N -m orpo train ... (or accelerate launch --num_processes N)",
        stage="resolve",
    ),
)


def _trackers(report_to: Any) -> list[str]:
    return [report_to] if isinstance(report_to, str) else list(report_to or [])


def check_trackers(report_to: str | Iterable[str] | None) -> None:
    """A one-line :class:`UsageError` for the first ``report_to`` tracker whose package is missing."""
    for name in _trackers(report_to):
        package = TRACKERS.get(name)
        if package is not None:
            require(f"--report-to {name}", package)


def check_requirements(values: Mapping[str, Any], stages: tuple[str, ...] = ("resolve", "run")) -> None:
    """Refuse, in one line naming the option and what it needs, the first option this machine cannot run:
    a missing package, no GPU, or one process where it needs several.  ``values``: field -> value as given;
    ``stages``: the rows to check (all but the trackers for "resolve" alone)."""
    for row in REQUIREMENTS:
        if row.stage not in stages or not row.applies(values):
            continue
        option = row.option(values)
        if row.hardware is not None:
            test, needed = HARDWARE[row.hardware]
            if not test():
                raise UsageError(f"{option} needs {needed}: {row.remedy}")
        processes = row.processes(values)
        if processes > 1 and world_size() < processes:
            here = world_size()
            raise UsageError(
                f"{option} needs {processes} or more processes (this run has {here}): launch it with {row.launch}"
            )
        package = row.package(values)
        if package is not None:
            require(option, package)
    if "run" in stages:
        check_trackers(values.get("report_to"))
