"""Per-layer relative error (first 256 WikiText-2 tokens).

Usage: python results/layer_errors_experiment.py OUT.json"""

from _setup import arguments, load, wikitext_ids, write_json

from llm_int8.evaluation import METHODS, MethodSpec
from llm_int8.evaluation.diagnose import layer_errors

(out,) = arguments(__doc__, str)
m, tok = load()
ids = wikitext_ids(tok, 256)
floatw = MethodSpec(
    "llm.int8+floatW",
    "vector-wise + decomposition, outlier columns x float W (emulated)",
    x_per_row=True,
    w_per_row=True,
    threshold=6.0,
    outlier_weight="float",
)
rows = layer_errors(m, ids, [METHODS["vectorwise"], METHODS["llm.int8"], floatw, METHODS["default"]])
write_json(out, rows)
