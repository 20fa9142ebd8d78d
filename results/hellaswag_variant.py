"""HellaSwag for a library variant that is not a named ``llm-int8 eval`` method (e.g. another α).

Usage: python results/hellaswag_variant.py HELLASWAG_FILE SKIP LIMIT ACTIVATION THRESHOLD OUT.json
  e.g. python results/hellaswag_variant.py ../shared/data/hellaswag/hellaswag_val_full.txt.bz2 0 1000 \\
           zeropoint 4 results/hellaswag_1000_zeropoint_a4.json

Runs the real ``Int8Linear`` path through ``compare_methods`` and writes the same JSON layout as
``llm-int8 eval`` (settings ``hellaswag_skip`` / ``hellaswag_limit``, per-task predictions), so
``results/hellaswag_paired.py`` can pair it with the fp32 runs."""

import torch
from _setup import arguments, hellaswag_tasks, library_variant, load, write_json

from llm_int8.evaluation import compare_methods

path, skip, limit, activation, threshold, out = arguments(__doc__, str, int, int, str, float, str)
tasks = hellaswag_tasks(skip, limit, path=path)
spec = library_variant(  # the default method with other activation codes and α
    f"{activation}@{threshold:g}",
    f"LLM.int8(), {activation} per-token activations, α = {threshold:g}",
    zeropoint=activation == "zeropoint",
    threshold=threshold,
)
model, tok = load()
rows = compare_methods(model, tok, [spec], tasks=tasks, progress=True)
settings = {"hellaswag": path, "hellaswag_skip": skip, "hellaswag_limit": limit, "torch": torch.__version__}
write_json(out, {"results": rows, "settings": settings})
print({k: v for k, v in rows[0].items() if k != "hellaswag_predictions"})
