"""Perplexity window by window, so that one run gives every prefix (1,024, 2,048, 4,096 ... tokens):
the 16-bit reference rows for tables measured on different prefixes of WikiText-2.

Usage: python results/window_ppl.py OUT_STEM TOKENS METHOD [METHOD ...]
  e.g. python results/window_ppl.py results/window_ppl_bf16 8192 bf16 fp16
Each method scores the first TOKENS WikiText-2 test tokens in windows of 512 (the same windows as
``llm-int8 eval --window 512``); OUT_STEM.json holds each window's summed NLL and the perplexity of
every power-of-two prefix, written after each method.
"""

from __future__ import annotations

import math

from _setup import arguments, load, wikitext_ids, write_json

from llm_int8.evaluation import apply_method, perplexity

WINDOW = 512


def main() -> None:
    stem, tokens, *names = arguments(__doc__, str, int, str, ...)
    model, tok = load()
    ids = wikitext_ids(tok, tokens)
    windows = ids.numel() // WINDOW
    rows = []
    for name in names:
        converted = apply_method(model, name)
        nll = []
        for w in range(windows):
            r = perplexity(converted, ids[w * WINDOW : (w + 1) * WINDOW], window=WINDOW)
            nll.append(r.nll * r.tokens)
            print(f"{name}: window {w + 1}/{windows}", flush=True)
        prefixes = {}
        k = 2
        while k <= windows:
            prefixes[k * WINDOW] = math.exp(sum(nll[:k]) / (k * (WINDOW - 1)))
            k *= 2
        rows.append({"method": name, "window_nll_sums": nll, "prefix_perplexity": prefixes})
        write_json(f"{stem}.json", {"window": WINDOW, "tokens": windows * WINDOW, "results": rows})
        print(name, {t: round(p, 3) for t, p in prefixes.items()}, flush=True)
        del converted


if __name__ == "__main__":
    main()
