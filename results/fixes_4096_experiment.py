"""LLM.int8() at α = 3 (library path) and with zeropoint per-token X (emulated), first 4,096 WikiText-2 tokens.

Usage: python results/fixes_4096_experiment.py OUT.json  (compare with results/library.json, same tokens)"""

import json
import sys

import torch

from llm_int8.evaluation import MethodSpec, compare_methods, read_text, tokenize_text
from llm_int8.integrations import load_model

torch.set_grad_enabled(False)
m, tok = load_model(None)
ids = tokenize_text(tok, read_text("/work/shared/data/wikitext-2/test.txt"), 4096)
specs = [
    MethodSpec(
        "llm.int8@3.0",
        "library Int8Linear, threshold 3.0",
        library=True,
        x_per_row=True,
        w_per_row=True,
        threshold=3.0,
        outlier_weight="int8",
    ),
    MethodSpec(
        "llm.int8+zeropointX",
        "zeropoint per-token X, absmax vector-wise W, decomposition (emulated)",
        x_per_row=True,
        w_per_row=True,
        zeropoint=True,
        w_zeropoint=False,
        threshold=6.0,
        outlier_weight="int8",
    ),
]
rows = compare_methods(m, tok, specs, input_ids=ids, window=512, on_result=lambda r: print(r, flush=True))
json.dump(rows, open(sys.argv[1], "w"), indent=1)
