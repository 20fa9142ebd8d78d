"""HellaSwag for a library variant that is not a named ``llm-int8 eval`` method (e.g. another α).

Usage: python results/hellaswag_variant.py HELLASWAG_FILE SKIP LIMIT ACTIVATION THRESHOLD OUT.json
  e.g. python results/hellaswag_variant.py ../shared/data/hellaswag/hellaswag_val_full.txt.bz2 0 1000 \\
           zeropoint 4 results/hellaswag_1000_zeropoint_a4.json

Runs the real ``Int8Linear`` path through ``compare_methods`` and writes the same JSON layout as
``llm-int8 eval`` (settings ``hellaswag_skip`` / ``hellaswag_limit``, per-task predictions), so
``results/hellaswag_paired.py`` can pair it with the fp32 runs."""

import dataclasses
import json
import sys

import torch

from llm_int8.evaluation import METHODS, compare_methods, read_hellaswag
from llm_int8.integrations import load_model

path, skip, limit, activation, threshold, out = sys.argv[1:7]
skip, limit, threshold = int(skip), int(limit), float(threshold)
tasks = read_hellaswag(path, limit=limit, skip=skip)
spec = dataclasses.replace(  # the default method with other activation codes and α
    METHODS["default"],
    name=f"{activation}@{threshold:g}",
    description=f"LLM.int8(), {activation} per-token activations, α = {threshold:g}",
    zeropoint=activation == "zeropoint",
    threshold=threshold,
)
torch.set_grad_enabled(False)
model, tok = load_model(None)
rows = compare_methods(model, tok, [spec], tasks=tasks, progress=True)
settings = {"hellaswag": path, "hellaswag_skip": skip, "hellaswag_limit": limit, "torch": torch.__version__}
json.dump({"results": rows, "settings": settings}, open(out, "w"), indent=1)
print({k: v for k, v in rows[0].items() if k != "hellaswag_predictions"})
