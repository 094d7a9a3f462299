#!/usr/bin/env bash
# Fetch, on a machine with PyPI access, the wheels a bare GPU machine (Python 3.12, torch 2.11,
# transformers 5.17) lacks to run benchmarks/gpu_check.sh: datasets and its two pure-Python needs,
# TRL (for the side-by-side run) and liger-kernel, carried as .whl (ignored by git).  The machine's own
# transformers 5.17 is used: it is within orpo's range (>= 5.3), and it is what such images ship.
# torch, accelerate, peft, tokenizers, safetensors, pyarrow, pandas, regex, typer and pytest are
# already there.  flash-attn has no wheel for that torch: its tests skip.
#
#   bash benchmarks/device_wheels.sh            # -> .whl/
#
# Then, on the GPU machine, from the repository root (carry .whl):
#   bash benchmarks/gpu_check.sh                # installs them into /tmp/site itself
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEST=${DEST:-.whl}
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" \
    "datasets==5.2.0" "dill==0.4.1" "multiprocess==0.70.19" \
    "trl==1.16.0" "liger-kernel==0.8.5"
ls -la "$DEST"
