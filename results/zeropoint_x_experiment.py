"""Emulated LLM.int8() with zeropoint per-token X and absmax W, first 1,024 tokens.

Usage: python results/zeropoint_x_experiment.py OUT.json"""

from _setup import arguments, load, wikitext_ids, write_json

from llm_int8.evaluation import MethodSpec, compare_methods

(out,) = arguments(__doc__, str)
m, tok = load()
ids = wikitext_ids(tok, 1024)
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
write_json(out, rows)
