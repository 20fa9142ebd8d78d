"""Paired comparison of agreement rows, prompt by prompt: does a variant agree with fp32 more often than a base?

Usage: python results/agreement_paired.py BASE RESULT.json [RESULT.json ...]
  e.g. python results/agreement_paired.py default results/remedies_agreement.json

For every method in the files (``llm-int8 eval --agreement`` or ``results/remedies.py`` outputs, on
the same prompts) against BASE: prompts with an identical continuation for the method only / for
BASE only, and the two-sided sign-test p-value of that split (ties dropped); the same for the
first token; and the median over prompts of the change in the centred logits error and in KL, with
how many prompts got better. Also, for each method, how many of its differing answers part where
fp32's own top two tokens are within 0.1 in probability (knife edges).
"""

from __future__ import annotations

import json
import math
import statistics

from _setup import arguments


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of ``wins`` against ``losses`` at even odds."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def main() -> None:
    base, *files = arguments(__doc__, str, str, ...)
    rows: dict[str, dict[str, dict]] = {}
    for name in files:
        for r in json.load(open(name))["results"]:
            if "agreement_prompts" in r:
                rows[r["method"]] = {p["id"]: p for p in r["agreement_prompts"]}
    ref = rows[base]
    print(
        f"| method | identical: only method / only {base} (sign test p) | first token: only method / only {base} (p) "
        f"| median change of centred logits error (prompts better) | median change of KL (prompts better) "
        "| differing answers at a knife edge (fp32 top two within 0.1) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for method, got in rows.items():
        ids = sorted(set(got) & set(ref))
        cells = [f"`{method}`"]
        for key in ("identical", "first_token_same"):
            wins = sum(got[i][key] and not ref[i][key] for i in ids)
            losses = sum(ref[i][key] and not got[i][key] for i in ids)
            cells.append(f"{wins} / {losses} (p = {sign_test(wins, losses):.2f})")
        for key in ("logits_rel_error_centred", "kl"):
            d = [got[i][key] - ref[i][key] for i in ids]
            cells.append(f"{statistics.median(d):+.4f} ({sum(x < 0 for x in d)} of {len(ids)})")
        differ = [got[i] for i in ids if not got[i]["identical"]]
        edges = sum(r["ref_margin_prob"] is not None and r["ref_margin_prob"] < 0.1 for r in differ)
        cells.append(f"{edges} of {len(differ)}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
