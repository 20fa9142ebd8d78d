"""What each step from the default towards fp32 does, measured as the distance of the next-token
distributions from fp32 (the quantity that moves HellaSwag choices), and where the distance comes from.

Usage: python results/calibration_steps.py TEXT TOKENS OUT.json
  e.g. python results/calibration_steps.py ../shared/data/wikitext-2/test.txt 4096 results/calibration_steps.json

On the first TOKENS tokens of TEXT, in windows of 512, for each library variant against the float
model: mean KL(p_fp32 || p_int8) per token, the standard deviation of the change in the log-probability
of the next token (per-token noise), and the perplexity change. First with only one layer type
converted (which layers the distance comes from), then the steps: calibrated float dims
(``calibrate_outlier_dims`` on ``CALIBRATION_TEXT``, never on TEXT), α = 4 / 3, value projections
kept in float, and their combinations (``precise`` = all three at α = 3).
"""

import copy
import math
import time

import torch
from _setup import arguments, atomic_write, load, wikitext_ids, write_json

from llm_int8.analysis import calibrate_outlier_dims, calibration_ids
from llm_int8.integrations import linear_memory, quantize_model

text, tokens, out = arguments(__doc__, str, int, str)
model, tok = load()
ids = wikitext_ids(tok, tokens, path=text)
ids = ids[: ids.numel() // 512 * 512].view(-1, 512)
targets = ids[:, 1:].reshape(-1)


def log_probs(m):
    return torch.cat([m(row[None]).logits[0, :-1].float().log_softmax(-1) for row in ids])  # (T, vocab)


base = log_probs(model)
base_lp = base.gather(1, targets[:, None])[:, 0]
cal = calibration_ids(tok)
TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VALUE = ("v_proj", "value")


def measure(name, threshold=6.0, skip=(), calibrated=False):
    t = time.perf_counter()
    m = copy.deepcopy(model)
    skip = ("lm_head", *skip)
    dims = calibrate_outlier_dims(m, cal, threshold, skip_modules=skip) if calibrated else None
    m = quantize_model(m, threshold=threshold, skip_modules=skip, float_dims=dims)
    lp = log_probs(m)
    d = lp.gather(1, targets[:, None])[:, 0] - base_lp
    row = {
        "variant": name,
        "kl": (base.exp() * (base - lp)).sum(-1).mean().item(),
        "logp_change_std": d.std().item(),
        "perplexity_change": math.expm1(-d.mean().item()),
        "float_dims": sum(len(v) for v in (dims or {}).values()),
        "linear_mib": (lambda mem: (mem["int8"] + mem["float"]) / 2**20)(linear_memory(m)),
        "seconds": time.perf_counter() - t,
    }
    print(row, flush=True)
    return row


per_type = [measure(f"only {t}", skip=tuple(o for o in TYPES if o != t)) for t in TYPES]
steps = [
    measure("default (α = 6)"),
    measure("+ calibrated float dims", calibrated=True),
    measure("α = 4", threshold=4.0),
    measure("α = 3", threshold=3.0),
    measure("value projections in float", skip=VALUE),
    measure("calibrated, α = 3", threshold=3.0, calibrated=True),
    measure("calibrated, value in float", skip=VALUE, calibrated=True),
    measure("precise: calibrated, α = 3, value in float", threshold=3.0, skip=VALUE, calibrated=True),
]
write_json(out, {"text": text, "tokens": ids.numel(), "per_type": per_type, "steps": steps})
lines = [
    "| variant | KL to fp32 (×1e-3) | std Δ log p | Δ ppl | float dims | linear layers (MiB) |",
    "| --- | --- | --- | --- | --- | --- |",
]
for r in per_type + steps:
    lines.append(
        f"| {r['variant']} | {1e3 * r['kl']:.2f} | {r['logp_change_std']:.4f} | "
        f"{100 * r['perplexity_change']:+.2f}% | {r['float_dims']} | {r['linear_mib']:.1f} |"
    )
atomic_write(out.removesuffix(".json") + ".md", "\n".join(lines) + "\n")
print("\n".join(lines))
