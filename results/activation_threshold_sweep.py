"""LLM.int8() through the library (``quantize_model``) with several activation codes and thresholds α,
on the first N WikiText-2 test tokens (windows of 512), one row per setting.

Usage: python results/activation_threshold_sweep.py OUT.json N SETTINGS
  e.g. python results/activation_threshold_sweep.py results/activation_threshold_32k.json 32768 \\
           zeropoint@6,zeropoint@5,zeropoint@4,zeropoint@3
(fp32 and absmax@6 on the same tokens: results/library_32k.json)"""

import copy
import json
import sys
import time

import torch

from llm_int8 import quantize_model
from llm_int8.evaluation import perplexity, read_text, tokenize_text
from llm_int8.integrations import load_model

torch.set_grad_enabled(False)
model, tokenizer = load_model(None)
ids = tokenize_text(tokenizer, read_text("../shared/data/wikitext-2/test.txt"), int(sys.argv[2]))
rows = []
for setting in sys.argv[3].split(","):
    activation, alpha = setting.split("@")
    quantized = quantize_model(copy.deepcopy(model), threshold=float(alpha), activation=activation)
    start = time.time()
    result = perplexity(quantized, ids, window=512)
    rows.append(
        {
            "activation": activation,
            "threshold": float(alpha),
            "perplexity": result.perplexity,
            "tokens": result.tokens,
            "seconds": time.time() - start,
        }
    )
    print(rows[-1], flush=True)
with open(sys.argv[1], "w") as f:
    json.dump(rows, f, indent=1)
