"""Optional packages and hardware (orpo.config.extras): every row of both tables refused in one named line
before anything is loaded, with the package's pip extra; a missing package is simulated through the lookup."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from orpo.cli import main
from orpo.config import extras
from orpo.config.extras import OPTIMIZERS, PACKAGES, REQUIREMENTS, TRACKERS, check_requirements, optimizer_package
from orpo.config.usage import UsageError

ROOT = Path(__file__).resolve().parents[2]
BASE = ["train", "--model", "./m", "--data-path", "./d.jsonl"]  # neither exists: refused before they are looked at


@pytest.fixture
def machine(monkeypatch):
    """A machine with every package and all hardware unless a test takes some away."""
    missing: set[str] = set()
    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name in missing:
            return None
        if any(name in package.modules for package in PACKAGES.values()):
            return object()  # installed, as far as the lookup says
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    for need in extras.HARDWARE:
        monkeypatch.setitem(extras.HARDWARE, need, (lambda: True, extras.HARDWARE[need][1]))
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    class Machine:
        def without(self, *packages: str) -> None:
            for package in packages:
                missing.update(PACKAGES[package].modules)

        def no(self, need: str) -> None:
            monkeypatch.setitem(extras.HARDWARE, need, (lambda: False, extras.HARDWARE[need][1]))

    return Machine()


def refused(capsys, flags: list[str]) -> str:
    assert main([*BASE, *flags]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.removeprefix("orpo train: error: ").rstrip("\n")


#: (id, flags, missing packages, missing hardware, the message): every row of REQUIREMENTS at least once
CASES = [
    (
        "deepspeed",
        ["--deepspeed", "ds.json"],
        ["deepspeed"],
        [],
        "--deepspeed needs deepspeed: pip install 'orpo[deepspeed]'",
    ),
    (
        "optim-bnb",
        ["--optim", "adamw_bnb_8bit"],
        ["bitsandbytes"],
        [],
        "--optim adamw_bnb_8bit needs bitsandbytes: pip install 'orpo[gpu]'",
    ),
    (
        "quantization-cpu",
        ["--quantization", "int4"],
        [],
        ["cuda"],
        "--quantization int4 needs a CUDA GPU (none found): train without --quantization on this machine",
    ),
    (
        "quantization-bnb",
        ["--quantization", "int8"],
        ["bitsandbytes"],
        [],
        "--quantization int8 needs bitsandbytes: pip install 'orpo[gpu]'",
    ),
    (
        "liger-cpu",
        ["--use-liger-kernel"],
        [],
        ["cuda"],
        "--use-liger-kernel needs a CUDA GPU (none found): train without --use-liger-kernel on this machine",
    ),
    (
        "liger-package",
        ["--use-liger-kernel"],
        ["liger-kernel"],
        [],
        "--use-liger-kernel needs liger-kernel: pip install 'orpo[gpu]'",
    ),
    (
        "flash-cpu",
        ["--attn-implementation", "flash_attention_2"],
        [],
        ["cuda"],
        "--attn-implementation flash_attention_2 needs a CUDA GPU (none found): use --attn-implementation sdpa on this machine",
    ),
    (
        "flash-package",
        ["--attn-implementation", "flash_attention_2"],
        ["flash-attn"],
        [],
        "--attn-implementation flash_attention_2 needs flash-attn: pip install 'orpo[flash]'",
    ),
    ("pillow", ["--image-column", "images"], ["pillow"], [], "--image-column needs pillow: pip install 'orpo[vision]'"),
    (
        "offload",
        ["--activation-checkpointing", "--activation-checkpointing-kwargs", '{"offload": true}'],
        [],
        ["accelerator"],
        "--activation-checkpointing-kwargs offload needs a GPU or other accelerator (none found): drop offload from "
        "--activation-checkpointing-kwargs on this machine",
    ),
    (
        "bf16",
        ["--bf16"],
        [],
        ["bf16"],
        "--bf16 needs a GPU with bf16 (none found): add --use-cpu to train in bf16 on the CPU, or drop --bf16 (float32)",
    ),
    (
        "tf32",
        ["--tf32", "true"],
        [],
        ["tf32"],
        "--tf32 needs an NVIDIA Ampere or newer GPU (none found): drop --tf32 on this machine",
    ),
    (
        "fsdp",
        ["--fsdp"],
        [],
        [],
        "--fsdp needs 2 or more processes (this run has 1): launch it with accelerate launch --config_file "
        '"$(orpo config path fsdp)" -m orpo train ...',
    ),
    (
        "parallelism",
        ["--parallelism-config", '{"cp_size": 2, "dp_shard_size": 2}'],
        [],
        [],
        "--parallelism-config (size 4) needs 4 or more processes (this run has 1): launch it with torchrun "
        "--nproc-per-node N -m orpo train ... (or accelerate launch --num_processes N)",
    ),
]


@pytest.mark.parametrize(
    ("flags", "packages", "hardware", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_an_option_this_machine_cannot_run_is_refused_in_one_line(machine, capsys, flags, packages, hardware, message):
    machine.without(*packages)
    for need in hardware:
        machine.no(need)
    assert refused(capsys, flags) == message


def test_every_requirement_row_has_a_case():
    applied = {index for _, flags, *_ in CASES for index, row in enumerate(REQUIREMENTS) if row.applies(_values(flags))}
    assert applied == set(range(len(REQUIREMENTS)))


def _values(flags: list[str]) -> dict:
    from orpo.cli.train import train_sources
    from orpo.config.options import merge

    return merge(*train_sources([*BASE[1:], *flags])[0])


@pytest.mark.parametrize("tracker", sorted(TRACKERS))
def test_a_missing_tracker_names_its_package(machine, capsys, tracker):
    package = PACKAGES[TRACKERS[tracker]]
    machine.without(package.name)
    assert refused(capsys, ["--report-to", tracker]) == f"--report-to {tracker} needs {package.name}: {package.install}"


def _optimizers() -> list[str]:
    from transformers.training_args import OptimizerNames

    return [o.value for o in OptimizerNames if optimizer_package(o.value) is not None]


@pytest.mark.parametrize("optim", _optimizers())
def test_an_optimizer_from_another_package_names_it(machine, capsys, optim):
    package = PACKAGES[optimizer_package(optim)]
    machine.without(package.name)
    assert refused(capsys, ["--optim", optim]) == f"--optim {optim} needs {package.name}: {package.install}"


def test_every_optimizer_prefix_matches_a_transformers_optimizer():
    names = _optimizers()
    assert all(any(name.startswith(prefix) for name in names) for prefix, _ in OPTIMIZERS)
    assert optimizer_package("adamw_torch") is None and optimizer_package("adafactor") is None


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_every_package_row_is_reachable_and_its_extra_is_declared(machine, name):
    package = PACKAGES[name]
    reachable = (
        set(TRACKERS.values())
        | {p for _, p in OPTIMIZERS}
        | {"deepspeed", "liger-kernel", "flash-attn", "pillow"}
        | {"zstandard"}  # orpo.data.scan, when a .zst file is read
    )
    assert name in reachable
    if package.extra is not None:
        tomllib = pytest.importorskip("tomllib")  # Python 3.11+
        declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
            "optional-dependencies"
        ]
        assert any(req.split(">")[0].split("=")[0].strip() == name for req in declared[package.extra]), declared
        assert package.install == f"pip install 'orpo[{package.extra}]'"
    else:
        assert package.install == f"pip install {name}"
    assert extras.is_installed(name)
    machine.without(name)
    assert not extras.is_installed(name)


def test_installed_packages_and_hardware_pass(machine):
    check_requirements(
        {
            "deepspeed": "ds.json",
            "optim": "paged_adamw_8bit",
            "quantization": "int4",
            "use_liger_kernel": True,
            "attn_implementation": "flash_attention_2",
            "image_column": "images",
            "bf16": True,
            "tf32": True,
            "report_to": ["wandb", "tensorboard"],
        }
    )


def test_several_processes_pass(machine, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    check_requirements({"fsdp": "full_shard", "parallelism_config": {"cp_size": 2, "dp_shard_size": 2}})
    with pytest.raises(UsageError, match=r"needs 8 or more processes \(this run has 4\)"):
        check_requirements({"parallelism_config": {"cp_size": 2, "dp_shard_size": 4}})


def test_bf16_on_the_cpu_is_not_refused(machine):
    machine.no("bf16")
    check_requirements({"bf16": True, "use_cpu": True})
    check_requirements({"fsdp": "full_shard", "fsdp_config": {"xla": True}})  # XLA FSDP: one process per host


def test_print_config_does_not_check_packages(machine, capsys):
    machine.without("deepspeed")
    assert main([*BASE, "--deepspeed", "ds.json", "--print-config"]) == 0  # a recipe for another machine
    assert "deepspeed: ds.json" in capsys.readouterr().out


def test_python_callers_are_refused_by_the_run_engine_before_data(machine, monkeypatch, tmp_path):
    import orpo.training.run as run
    from orpo import ORPOConfig
    from orpo.config.arguments import DataArguments, ModelArguments

    machine.no("cuda")
    monkeypatch.setattr(run, "load_data", lambda *a: pytest.fail("data loaded before the check"))
    config = ORPOConfig(output_dir=str(tmp_path), use_liger_kernel=True, report_to="none")
    with pytest.raises(UsageError) as info:
        run.build_trainer(ModelArguments("m"), DataArguments("d.jsonl"), config)
    assert str(info.value) == (
        "--use-liger-kernel needs a CUDA GPU (none found): train without --use-liger-kernel on this machine"
    )
