"""Decode only: fp32, int8 with the C++ pass, int8 with the PyTorch sequence, interleaved.

12 rounds (after a warm-up round) of 16 greedy steps after a 32-token prompt, thread CPU time, one
thread. Run from the repository root (the output of the run in BENCHMARKS.md section (i) is
``decode_ab.txt`` beside this file):

    LLM_INT8_CACHE_DIR=/tmp/cache20m PYTHONPATH=src python benchmarks/results/issue20/merged/decode_ab.py
"""

from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_e2e_ab  # noqa: E402

import llm_int8  # noqa: E402
from llm_int8.evaluation import read_text, tokenize_text  # noqa: E402
from llm_int8.integrations import load_model  # noqa: E402
from llm_int8.ops.kernels import native  # noqa: E402

ROUTES = {"fp32": ("fp32", True), "int8": ("int8", True), "int8_torch": ("int8", False)}


def main() -> None:
    torch.set_num_threads(1)
    base, tokenizer = load_model(None, dtype=torch.float32)
    base.eval()
    ids = tokenize_text(tokenizer, read_text(ROOT.parent / "shared/data/wikitext-2/test.txt"), max_tokens=544)
    prompt = ids[512:][None]
    models = {"fp32": base, "int8": llm_int8.quantize_model(copy.deepcopy(base))}
    real = native.ops
    times: dict[str, list[float]] = {k: [] for k in ROUTES}
    with torch.inference_mode():
        for r in range(13):
            for name, (model, native_on) in ROUTES.items():
                native.ops = real if native_on else (lambda: None)
                seconds = bench_e2e_ab._decode(models[model], prompt, 16)
                if r:
                    times[name].append(seconds)
    native.ops = real
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        ms = [round(x * 1e3, 1) for x in v]
        print(f"{k}: {1 / med[k]:.1f} tok/s, {med['fp32'] / med[k]:.2f}x fp32, per-round ms per token {ms}")


if __name__ == "__main__":
    main()
