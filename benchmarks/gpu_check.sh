#!/usr/bin/env bash
# The GPU check of issue 12, one command: the CUDA tests, then the layer and 7B-shaped Llama benchmarks.
#
#   bash benchmarks/gpu_check.sh OUTDIR             # one CUDA GPU (sm_80+); meant to finish in < 8 min on an H100/H200
#   bash benchmarks/gpu_check.sh OUTDIR --dry-run   # CPU only: Triton interpreter, tiny sizes (~3 min on 2 cores)
#
# Extra arguments go to benchmarks/gpu_check.py (--hidden, --tokens, --layers, --prefill, --skip-model).
# OUTDIR receives tests.log, bench.log, gpu_check.md and gpu_check.json (device, versions, command, tables).
#
# On this workplace's GPU machine (the device tool's `run`, one NVIDIA H200, torch 2.11 / triton 3.6 /
# transformers 5.17, no network, no bitsandbytes), from the repository root:
#   once, here:  echo /.whl/ >> .git/info/exclude
#                python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#                  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#                  -d .whl bitsandbytes==0.50.2
#   one call:    run(carry=[".whl"], timeout_s=590, command=
#                  "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site
#                   .whl/*.whl && export PYTHONPATH=/tmp/site; bash benchmarks/gpu_check.sh $OUT/gpu")
# The files come back from $OUT/gpu. Timing follows the machine's METHOD.md: CUDA events (do_bench medians)
# after warm-up, weights rotated among copies larger than the L2, random (never zero) data. Leave the GPU's
# clocks and settings alone. Without the wheel the bnb rows are left out (the script says so).
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR [--dry-run] [gpu_check.py options]" >&2
    exit 2
fi
OUTDIR=$1
shift
cd "$(dirname "$0")/.."
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
dry=0
for arg in "$@"; do
    [[ "$arg" == "--dry-run" ]] && dry=1
done
if [[ $dry == 1 ]]; then
    export TRITON_INTERPRET=1  # before anything imports triton
    export LLM_INT8_CACHE_DIR=${LLM_INT8_CACHE_DIR:-$(mktemp -d)}  # keep the user's backend cache out of it
fi
start=$SECONDS
echo "== 1/2: tests/test_triton.py ($([[ $dry == 1 ]] && echo 'Triton interpreter, CPU tensors' || echo 'natively on CUDA'))"
python3 -m pytest -q -p no:cacheprovider tests/test_triton.py 2>&1 | tee "$OUTDIR/tests.log"
echo "== 2/2: layer and model benchmarks"
python3 benchmarks/gpu_check.py --out "$OUTDIR" "$@" 2>&1 | tee "$OUTDIR/bench.log"
echo "== gpu_check done in $((SECONDS - start)) s: $OUTDIR/gpu_check.md"
