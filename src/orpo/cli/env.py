"""``orpo env``: the versions a bug report needs (like ``trl env``), as text or ``--json``.

Versions come from the installed distributions' metadata, so nothing optional is imported; torch is imported
for CUDA availability and device names.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata
from typing import Any

PROG = "orpo env"
NOT_INSTALLED = "not installed"
#: distribution names, in the order reported
PACKAGES = (
    "orpo",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "tokenizers",
    "safetensors",
    "trl",
    "bitsandbytes",
    "liger-kernel",
    "flash-attn",
    "deepspeed",
)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


def _torch_devices() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {}
    cuda = torch.cuda.is_available()
    return {
        "cuda available": cuda,
        "cuda version": torch.version.cuda or "none",
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
    }


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    info.update({name: _version(name) for name in PACKAGES})
    info.update({f"torch {key}": value for key, value in _torch_devices().items()})
    return info


def cmd_env(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Print the environment for bug reports.")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    info = environment()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("Copy-paste the lines below into your bug report.\n")
    for key, value in info.items():
        shown = (", ".join(value) or "none") if isinstance(value, list) else value
        print(f"- {key}: {shown}")
    return 0
