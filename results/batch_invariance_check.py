"""How much one sequence's numbers move with its batch mates: one layer, and the whole SmolLM2-135M (issue 27).

Usage: python results/batch_invariance_check.py OUT.json [WIKITEXT]

Layer: SmolLM2's layer-15 ``q_proj`` (576 x 576) fed the real inputs it sees on WikiText-2 test
tokens; token 0's output row computed alone (M = 1) and in batches of M = 16, 17, 64, 512 of other
real tokens, with and without 15 mates whose outliers were scaled up (in dims other than token 0's);
the largest change of that row, for ``default`` and ``batch_invariant``, fp32 and bf16.
Model: the first 128-token window of the text scored alone and in a batch with three other windows
(same length, no padding, so attention sees the same keys); the largest change of its logits, for
fp32 (the float model: what the float parts of the model themselves do), ``default`` and
``batch_invariant``.
"""

import copy
import json

import torch
from _setup import arguments

import llm_int8
from llm_int8.evaluation import read_text, tokenize_text
from llm_int8.integrations import load_model

args = arguments(__doc__, str, ...)
out_path = args[0]
text = args[1] if len(args) > 1 else "../shared/data/wikitext-2/test.txt"
base, tokenizer = load_model(None, dtype=torch.float32)
base.eval()
ids = tokenize_text(tokenizer, read_text(text), max_tokens=4 * 128)
captured = {}
hook = base.model.layers[15].self_attn.q_proj.register_forward_hook(
    lambda m, a, o: captured.__setitem__("x", a[0].detach().reshape(-1, a[0].shape[-1]))
)
with torch.no_grad():
    base(ids[None])
hook.remove()
X = captured["x"]  # (512, 576) real inputs
lin = base.model.layers[15].self_attn.q_proj
results = {"layer": {}, "model": {}}
for name, invariant in (("default", False), ("batch_invariant", True)):
    layer = llm_int8.Int8Linear.from_linear(lin, batch_invariant=invariant)
    for dtype in (torch.float32, torch.bfloat16):
        x = X.to(dtype)
        with torch.inference_mode():
            alone = layer(x[:1])[0].float()
            worst = 0.0
            for M in (16, 17, 64, 512):
                for loud in (False, True):
                    batch = x[:M].clone()
                    if loud:  # 15 mates with outliers: their largest non-outlier dim scaled past α
                        dims = (batch[1:16].abs() * (batch[:1].abs() < layer.threshold)).argmax(dim=1)
                        batch[torch.arange(1, min(16, M)), dims[: min(15, M - 1)]] *= 8
                    worst = max(worst, float((layer(batch)[0].float() - alone).abs().max()))
        results["layer"][f"{name} {str(dtype).split('.')[-1]}"] = worst
        print(name, dtype, "layer row: max |change|", worst, flush=True)
windows = ids.reshape(4, 128)
for name in ("fp32", "default", "batch_invariant"):
    model = base if name == "fp32" else llm_int8.quantize_model(copy.deepcopy(base), batch_invariant=name != "default")
    with torch.inference_mode():
        alone = model(windows[:1]).logits[0]
        batched = model(windows).logits[0]
    results["model"][name] = {
        "max_abs_logit_change": float((batched - alone).abs().max()),
        "bit_identical": bool(torch.equal(batched, alone)),
        "same_greedy_tokens": bool(torch.equal(batched.argmax(-1), alone.argmax(-1))),
    }
    print(name, "model:", results["model"][name], flush=True)
with open(out_path, "w") as f:
    json.dump(results, f, indent=1)
