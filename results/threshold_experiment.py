"""LLM.int8() (library path) at thresholds 4 and 3, first 1,024 WikiText-2 tokens.

Usage: python results/threshold_experiment.py OUT.json"""

from _setup import arguments, library_variant, load, wikitext_ids, write_json

from llm_int8.evaluation import compare_methods

(out,) = arguments(__doc__, str)
m, tok = load()
ids = wikitext_ids(tok, 1024)
specs = [
    library_variant(f"llm.int8@{t}", f"library Int8Linear, threshold {t}", base="llm.int8", threshold=t)
    for t in (4.0, 3.0)
]
rows = compare_methods(m, tok, specs, input_ids=ids, window=512, on_result=lambda r: print(r, flush=True))
write_json(out, rows)
