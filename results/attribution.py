"""Where the default's error on its worst chat prompts comes from: which layers, which tokens.

Usage: python results/attribution.py AGREEMENT.json K OUT.json
  e.g. python results/attribution.py results/remedies_screen.json 8 results/attribution.json

Takes the K prompts on which the ``default`` row of AGREEMENT.json (an ``llm-int8 eval
--agreement`` or ``results/remedies.py`` output) has the largest KL(fp32 ‖ default) at the last
position (the plain logits error is mostly a shift of every logit, which KL does not see), and for
each, on the prompt in the chat template:

* ``float_swap_in``: the default model with one group of layers put back to float — each layer
  type (all 30 ``v_proj`` ...) and each block — and the KL and centred logits error left at the
  last position;
* ``token_errors``: per layer, on the float model's own inputs, the token with the largest output
  error, with its row's absmax and mean |x| (outside the |x| >= 6 columns); the same for the
  per-token outlier rule (``relcol@30``, results/remedies.py) beside it.

Writes OUT.json and OUT.md (a summary table per prompt).
"""

from __future__ import annotations

import copy
import json

from _setup import arguments, atomic_write, load, write_json

from llm_int8 import quantize_model
from llm_int8.evaluation import read_prompts
from llm_int8.evaluation.agreement import chat_input_ids
from llm_int8.evaluation.diagnose import float_swap_in, layer_groups, token_errors
from llm_int8.evaluation.variants import RelativeOutlierLinear, wrap_linears


def _worst(path: str, k: int) -> list[dict]:
    rows = next(r for r in json.load(open(path))["results"] if r["method"] == "default")["agreement_prompts"]
    return sorted(rows, key=lambda r: -r["kl"])[:k]


def _summary(prompt_id: str, text: str, tokens: list[str], swaps: list[dict], errs: list[dict], rel: list[dict]) -> str:
    base = swaps[0]
    best = sorted(swaps[1:], key=lambda r: r["kl"])[:5]
    top = sorted(errs, key=lambda r: -r["error"])[:3]
    rel_by_layer = {r["layer"]: r for r in rel}
    lines = [
        f"**{prompt_id}** ({text[:60]!r}{'...' if len(text) > 60 else ''}): at the last position KL "
        f"{base['kl']:.4f}, logits error {base['logits_rel_error']:.3f} "
        f"(centred {base['logits_rel_error_centred']:.3f})",
        "",
        "| put back to float | KL left | centred logits error left |",
        "| --- | --- | --- |",
        *(
            f"| {r['group']} ({r['layers']} layers) | {r['kl']:.4f} | {r['logits_rel_error_centred']:.3f} |"
            for r in best
        ),
        "",
        "| layer | worst token | its output error (default / per-token rule) | median over tokens "
        "| row absmax / mean abs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in top:
        lines.append(
            f"| {r['layer']} | {r['token']} {tokens[r['token']]!r} | {r['error']:.3f} / "
            f"{rel_by_layer[r['layer']]['error']:.3f} | {r['median_error']:.3f} | "
            f"{r['absmax']:.2f} / {r['mean_abs']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    agreement, k, out = arguments(__doc__, str, int, str)
    model, tok = load()
    default = quantize_model(copy.deepcopy(model))
    relcol = wrap_linears(quantize_model(copy.deepcopy(model)), lambda layer: RelativeOutlierLinear(layer, 30.0))
    prompts = {p.id: p for p in read_prompts()}
    groups = layer_groups(model)
    results, md = [], []
    for worst in _worst(agreement, k):
        p = prompts[worst["id"]]
        ids = chat_input_ids(tok, p.text)["input_ids"]
        tokens = tok.convert_ids_to_tokens(ids[0])
        swaps = float_swap_in(model, default, ids, groups)
        errs, rel = token_errors(model, default, ids), token_errors(model, relcol, ids)
        results.append({"id": p.id, "tokens": tokens, "float_swap_in": swaps, "token_errors": errs, "relcol": rel})
        md.append(_summary(p.id, p.text, tokens, swaps, errs, rel))
        print(md[-1], flush=True)
    write_json(out, {"agreement": agreement, "prompts": results})
    atomic_write(out.removesuffix(".json") + ".md", "\n".join(md))


if __name__ == "__main__":
    main()
