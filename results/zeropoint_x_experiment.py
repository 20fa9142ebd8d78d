"""Emulated LLM.int8() with zeropoint per-token X and absmax W, first 1,024 tokens.

Usage: python results/zeropoint_x_experiment.py OUT.json"""

import json
import sys

import torch

from llm_int8.evaluation import MethodSpec, compare_methods, read_text, tokenize_text
from llm_int8.integrations import load_model

torch.set_grad_enabled(False)
m, tok = load_model(None)
ids = tokenize_text(tok, read_text("/work/shared/data/wikitext-2/test.txt"), 1024)
specs = [
    MethodSpec(
        "llm.int8+zeropointX",
        "zeropoint per-token X, absmax vector-wise W, decomposition (outliers x dequantized W), emulated",
        x_per_row=True,
        w_per_row=True,
        zeropoint=True,
        w_zeropoint=False,
        threshold=6.0,
        outlier_weight="int8",
    )
]
rows = compare_methods(m, tok, specs, input_ids=ids, window=512, on_result=lambda r: print(r, flush=True))
json.dump(rows, open(sys.argv[1], "w"), indent=1)
