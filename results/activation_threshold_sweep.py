"""LLM.int8() through the library (``quantize_model``) with several activation codes and thresholds α,
on the first N WikiText-2 test tokens (windows of 512), one row per setting.

Usage: python results/activation_threshold_sweep.py OUT.json N SETTINGS
  e.g. python results/activation_threshold_sweep.py results/activation_threshold_32k.json 32768 \\
           zeropoint@6,zeropoint@5,zeropoint@4,zeropoint@3
(fp32 and absmax@6 on the same tokens: results/library_32k.json)"""

import copy
import time

from _setup import arguments, load, wikitext_ids, write_json

from llm_int8 import quantize_model
from llm_int8.evaluation import perplexity

out, tokens, settings = arguments(__doc__, str, int, str)
model, tokenizer = load()
ids = wikitext_ids(tokenizer, tokens)
rows = []
for setting in settings.split(","):
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
write_json(out, rows)
