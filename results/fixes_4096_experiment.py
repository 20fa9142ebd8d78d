"""LLM.int8() at α = 3 (library path) and with zeropoint per-token X (emulated), first 4,096 WikiText-2 tokens.

Usage: python results/fixes_4096_experiment.py OUT.json  (compare with results/library.json, same tokens)"""

from _setup import arguments, library_variant, load, wikitext_ids, write_json

from llm_int8.evaluation import MethodSpec, compare_methods

(out,) = arguments(__doc__, str)
m, tok = load()
ids = wikitext_ids(tok, 4096)
specs = [
    library_variant("llm.int8@3.0", "library Int8Linear, threshold 3.0", base="llm.int8", threshold=3.0),
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
write_json(out, rows)
