"""The Table 1 methods on the full WikiText-2 test text, joined from one ``llm-int8 eval`` run per method.

Usage: python results/full_table.py OUT_STEM
  reads results/full_fp32.log (the fp32 row, printed by the run that was stopped after it),
  results/full_default.json and results/full_<method>.json for every other method that was run;
  writes OUT_STEM.md and OUT_STEM.png (perplexity only; HellaSwag is in the 1,000-task files).

Every run scored the same 609 windows of 512 tokens (checked from each JSON's settings)."""

import json
import re

from _setup import HERE as here
from _setup import arguments, atomic_write

from llm_int8.evaluation import METHODS
from llm_int8.evaluation.report import markdown_table, plot_comparison

(stem,) = arguments(__doc__, str)
log = (here / "full_fp32.log").read_text()
fp32 = float(re.search(r"^fp32: perplexity ([0-9.]+)", log, re.M).group(1))
rows = [{"method": "fp32", "description": METHODS["fp32"].description, "perplexity": fp32}]
settings = None
for name in METHODS:
    path = here / f"full_{name}.json"
    if name == "fp32" or not path.exists():
        continue
    data = json.loads(path.read_text())
    s = {k: data["settings"][k] for k in ("text", "max_tokens", "tokens_scored", "window")}
    if settings is not None and s != settings:
        raise SystemExit(f"{path}: settings {s} differ from {settings}")
    settings = s
    for row in data["results"]:
        if row["method"] == name:
            rows.append({k: row[k] for k in ("method", "description", "perplexity", "seconds")})
print(f"settings: {settings}")
table = markdown_table(rows)
print(table)
atomic_write(stem + ".md", f"SmolLM2-135M-Instruct, full WikiText-2 test text: {settings}\n\n{table}")
plot_comparison(rows, stem + ".png", title="SmolLM2-135M, WikiText-2 test (609 windows of 512)")
