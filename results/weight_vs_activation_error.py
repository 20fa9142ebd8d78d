"""Which operand's int8 rounding makes the default's layer error: the weight's or the activations'?

Usage: python results/weight_vs_activation_error.py OUT.json

For every linear layer (not lm_head) on its real input from the float model (first 256 WikiText-2
tokens), the relative output error ||Y_q - Y|| / ||Y|| in float64 when only ``W`` is rounded to its
stored int8 codes (per-row absmax), when only ``X`` is (the default: zeropoint per token, columns
with |x| >= 6 kept exact), and when both are; averaged per layer type."""

import collections
import statistics

import torch
from _setup import arguments, load, wikitext_ids, write_json
from torch import nn

from llm_int8.primitives import outlier_columns, rowwise_quantize, zeropoint_quantize

(out_path,) = arguments(__doc__, str)
model, tok = load()
ids = wikitext_ids(tok, 256)
names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")]
inputs = {}
hooks = [
    model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: inputs.__setitem__(n, a[0][0].detach()))
    for n in names
]
model(ids[None])
for h in hooks:
    h.remove()


def rounded_x(X: torch.Tensor, alpha: float = 6.0) -> torch.Tensor:
    O = outlier_columns(X, alpha)
    codes, step, zp = zeropoint_quantize(X.masked_fill(O, 0), dim=-1)
    Xd = (codes.double() - zp.double()[:, None]) * step.double()[:, None]
    Xd[:, O] = X[:, O].double()
    return Xd


def rounded_w(W: torch.Tensor) -> torch.Tensor:
    codes, step = rowwise_quantize(W, dim=-1)
    return codes.double() * step.double()[:, None]


per_type = collections.defaultdict(lambda: collections.defaultdict(list))
for n in names:
    X, W = inputs[n], model.get_submodule(n).weight.detach()
    Y = X.double() @ W.double().T
    Xd, Wd = rounded_x(X), rounded_w(W)
    for key, Yq in (("W only", X.double() @ Wd.T), ("X only", Xd @ W.double().T), ("both", Xd @ Wd.T)):
        per_type[n.split(".")[-1]][key].append(((Yq - Y).norm() / Y.norm()).item())
out = {t: {k: statistics.mean(v) for k, v in d.items()} for t, d in per_type.items()}
for t, d in out.items():
    print(f"| {t} | " + " | ".join(f"{100 * d[k]:.2f}%" for k in ("W only", "X only", "both")) + " |")
write_json(out_path, out)
