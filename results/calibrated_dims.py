"""Which input dims ``calibrate_outlier_dims`` keeps in float for the bundled SmolLM2, at α = 6 and 3.

Usage: python results/calibrated_dims.py OUT.json
  e.g. python results/calibrated_dims.py results/calibrated_dims.json

Calibrates on the built-in ``CALIBRATION_TEXT`` (as the ``calibrated`` and ``precise`` methods do)
and writes ``{"alpha=6": {layer: dims}, ...}`` with a summary per threshold: layers, dims in all,
the dims found at the most layer inputs, the layer types, and the layers with the most dims.
"""

import collections

from _setup import arguments, load, write_json

from llm_int8.analysis import calibrate_outlier_dims, calibration_ids

(out_path,) = arguments(__doc__, str)
model, tok = load()
ids = calibration_ids(tok)
out = {"calibration_tokens": ids.numel()}
for alpha in (6.0, 3.0):
    dims = calibrate_outlier_dims(model, ids, alpha)
    per_dim = collections.Counter(d for v in dims.values() for d in v)
    summary = {
        "layers": len(dims),
        "dims": sum(map(len, dims.values())),
        "most_common_dims": per_dim.most_common(5),
        "layer_types": dict(collections.Counter(k.rsplit(".", 1)[-1] for k in dims)),
        "largest": sorted(((len(v), k) for k, v in dims.items()), reverse=True)[:5],
    }
    print(f"α = {alpha:g}: {summary}")
    out[f"alpha={alpha:g}"] = {"summary": summary, "float_dims": {k: list(v) for k, v in dims.items()}}
write_json(out_path, out)
