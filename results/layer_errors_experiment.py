"""Per-layer relative error (first 256 WikiText-2 tokens).

Usage: python results/layer_errors_experiment.py OUT.json"""

import json
import sys

import torch

from llm_int8.evaluation import METHODS, MethodSpec, read_text, tokenize_text
from llm_int8.evaluation.diagnose import layer_errors
from llm_int8.integrations import load_model

torch.set_grad_enabled(False)
m, tok = load_model(None)
ids = tokenize_text(tok, read_text("/work/shared/data/wikitext-2/test.txt"), 256)
floatw = MethodSpec(
    "llm.int8+floatW",
    "vector-wise + decomposition, outlier columns x float W (emulated)",
    x_per_row=True,
    w_per_row=True,
    threshold=6.0,
    outlier_weight="float",
)
rows = layer_errors(m, ids, [METHODS["vectorwise"], METHODS["llm.int8"], floatw, METHODS["default"]])
json.dump(rows, open(sys.argv[1], "w"), indent=1)
