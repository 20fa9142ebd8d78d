"""LLM.int8() (library path) at thresholds 4 and 3, first 1,024 WikiText-2 tokens.

Usage: python results/threshold_experiment.py OUT.json"""

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
        f"llm.int8@{t}",
        f"library Int8Linear, threshold {t}",
        library=True,
        x_per_row=True,
        w_per_row=True,
        threshold=t,
        outlier_weight="int8",
    )
    for t in (4.0, 3.0)
]
rows = compare_methods(m, tok, specs, input_ids=ids, window=512, on_result=lambda r: print(r, flush=True))
json.dump(rows, open(sys.argv[1], "w"), indent=1)
