"""How much each int8 variant perturbs HellaSwag ending scores, on tasks kept out of the accuracy runs.

Usage: python results/hellaswag_noise.py HELLASWAG_FILE SKIP COUNT OUT.json

Scores tasks SKIP..SKIP+COUNT-1 (after the 2,000 used for accuracy, so choosing a variant here
does not select on the accuracy tasks) with fp32 and each variant, and reports against fp32:
the standard deviation of the change in each ending's length-normalised log-likelihood (the
acc_norm score; nats per character), and how many acc_norm choices change. A variant that flips
fewer choices loses less accuracy: a flip of a better-than-chance model costs accuracy on average.
"""

import copy
import statistics
import time

from _setup import arguments, hellaswag_tasks, load, write_json

from llm_int8.evaluation import score_hellaswag
from llm_int8.integrations import quantize_model

path, skip, count, out = arguments(__doc__, str, int, int, str)
tasks = hellaswag_tasks(skip, count, path=path)
model, tok = load()
chars = [[len(" " + e) for e in t.endings] for t in tasks]


def scores(m):
    r = score_hellaswag(m, tok, tasks)
    return r, [ll / n for lls, ns in zip(r.log_likelihoods, chars, strict=True) for ll, n in zip(lls, ns, strict=True)]


def variant(activation="zeropoint", threshold=6.0, weight_only=False):
    m = quantize_model(copy.deepcopy(model), threshold=threshold, activation=activation)
    if weight_only:  # X in bf16 against the same int8 weight, at every size: the weight's own share
        for mod in m.modules():
            if hasattr(mod, "weight_only_max_tokens"):
                mod.weight_only_max_tokens = 10**9
    return m


base, base_s = scores(model)
variants = {
    "default (zeropoint, α=6)": dict(),
    "zeropoint, α=5": dict(threshold=5.0),
    "zeropoint, α=4": dict(threshold=4.0),
    "zeropoint, α=3": dict(threshold=3.0),
    "paper (absmax, α=6)": dict(activation="absmax"),
    "int8 weight only (X bf16)": dict(weight_only=True),
}
rows = []
for name, kw in variants.items():
    t = time.perf_counter()
    r, s = scores(variant(**kw))
    d = [a - b for a, b in zip(s, base_s, strict=True)]
    rows.append(
        {
            "variant": name,
            "score_change_std": statistics.pstdev(d),
            "choices_changed": sum(p != q for p, q in zip(r.predictions, base.predictions, strict=True)),
            "acc_norm": r.acc_norm,
            "seconds": time.perf_counter() - t,
        }
    )
    print(rows[-1], flush=True)
write_json(out, {"tasks": [skip, skip + count], "fp32_acc_norm": base.acc_norm, "rows": rows})
