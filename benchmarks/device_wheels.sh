#!/usr/bin/env bash
# Fetch, on a machine with PyPI access, the wheels a bare GPU machine (Python 3.12, its own CUDA
# torch) lacks to run benchmarks/bench_orpo.py and tests/gpu: newer transformers, datasets and
# its two pure-Python needs, TRL (for the side-by-side run) and liger-kernel: ~16 MB, carried as
# .whl.  torch, accelerate, peft, tokenizers, safetensors, pyarrow, pandas and regex are expected
# there already.
#
#   bash benchmarks/device_wheels.sh            # -> .whl/ (ignored by git)
#
# Then, on the GPU machine, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src
#   python3 benchmarks/bench_orpo.py --json /tmp/bench.json
#   python3 -m pytest -q -p no:cacheprovider -o addopts='' tests/gpu
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEST=${DEST:-.whl}
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" \
    "transformers==5.23.0" "datasets==5.2.0" "dill==0.4.1" "multiprocess==0.70.19" \
    "trl==1.16.0" "liger-kernel==0.8.5"
ls -la "$DEST"
