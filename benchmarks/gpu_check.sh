#!/usr/bin/env bash
# The GPU check of issue 11, in one call on a bare H100/H200 (python3 with torch 2.11 and
# transformers 5.17; nothing downloadable there), in under 8 minutes:
#   1. the tests marked gpu (not the multi-process FSDP test, marked slow), at most 200 s;
#   2. bench_orpo.py on UltraFeedback-like lengths: TRL at its defaults (gradient checkpointing
#      on) and without, orpo padded, padding-free and shared-prompt per segment (sdpa, flex), 200 s;
#   3. 8 pairs of ~4096-token sequences: TRL at its defaults against orpo's shared prompt with
#      flex per segment, with and without gradient checkpointing, 130 s;
# then prints the two tables last.  Everything is also written under $OUT (default /tmp/gpu_check).
#
# Prepare the wheels here first (datasets, TRL, liger-kernel; the machine's transformers 5.17 is
# within orpo's range): bash benchmarks/device_wheels.sh  -> .whl/, carried with the call.
#
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TRL_EXPERIMENTAL_SILENCE=1
PY=${PY:-python3}
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src
fi
start=$(date +%s)
stamp() { echo "# [$(( $(date +%s) - start )) s] $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader | tee "$OUT/device.txt"
"$PY" -c 'import torch, transformers, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
  "cuda", torch.version.cuda, "transformers", transformers.__version__)' | tee -a "$OUT/device.txt"

stamp "gpu tests"
timeout 200 "$PY" -m pytest -q -p no:cacheprovider -o addopts='' -m "gpu and not slow" -rs --durations=8 tests \
    > "$OUT/tests.log" 2>&1
echo "gpu tests exit $?"
tail -n 30 "$OUT/tests.log"

stamp "bench: UltraFeedback-like lengths"
timeout 200 "$PY" benchmarks/bench_orpo.py --lengths ultrafeedback --steps 8 --warmup 2 \
    --variants trl,trl-nogc,orpo,orpo-padded,orpo-pf,orpo-sp,orpo-sp-flex --json "$OUT/bench_uf.json" \
    > "$OUT/bench_uf.md" 2> "$OUT/bench_uf.err"
echo "bench (ultrafeedback) exit $?"

stamp "bench: 8 pairs x ~4096 tokens"
timeout 130 "$PY" benchmarks/bench_orpo.py --prompt-words 1990,2010 --completion-words 2030,2070 --max-length 4224 \
    --steps 3 --warmup 1 --variants trl,orpo-sp-flex-gc,orpo-sp-flex --json "$OUT/bench_4k.json" \
    > "$OUT/bench_4k.md" 2> "$OUT/bench_4k.err"
echo "bench (4096) exit $?"
stamp "done"

for name in uf 4k; do
    echo
    echo "## bench_$name"
    tail -n 3 "$OUT/bench_$name.err"
    cat "$OUT/bench_$name.md"
done
