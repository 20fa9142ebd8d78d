"""Greedy agreement on the 66 built-in chat prompts: vLLM llm_int8 vs vLLM bf16 vs the library's transformers path.

    .venv-vllm/bin/python results/vllm_agreement.py [--new-tokens 16] [--limit N] [--out results/vllm_agreement]

Five generators of the same chat-template token ids (``llm_int8.evaluation.agreement.chat_input_ids``),
``--new-tokens`` greedy tokens each:

* ``vllm_int8``: vLLM, ``quantization="llm_int8"`` on the bf16 folder (online, the library's default options);
* ``vllm_bf16``: vLLM's own bf16;
* ``hf_int8_bf16``: transformers, the bf16 model converted by ``llm_int8.quantize_model`` (the same codes
  as vllm_int8: both quantize the same bf16 weights);
* ``hf_bf16``, ``hf_fp32``: transformers in bf16 and fp32 (the float references);
* ``vllm_int8_padded_tp1`` / ``_tp2``: vLLM llm_int8 on the head-padded copy (12 / 4 heads, the same function),
  tensor parallel 1 and 2.

vLLM answers one prompt at a time (a batch of one, as a lone server request). Writes JSON (every
prompt's tokens and text) and a Markdown table of each pair: first token the same, identical
continuations, mean share of tokens before the first difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import _vllm_models  # noqa: E402

PAIRS = [
    ("vllm_int8", "vllm_bf16"),
    ("vllm_int8", "hf_int8_bf16"),
    ("vllm_bf16", "hf_bf16"),
    ("vllm_int8", "hf_fp32"),
    ("vllm_bf16", "hf_fp32"),
    ("hf_int8_bf16", "hf_bf16"),
    ("vllm_int8_padded_tp2", "vllm_int8_padded_tp1"),
    ("vllm_int8_padded_tp1", "vllm_int8"),
]


def _vllm(ids: list[list[int]], new_tokens: int, kind: str = "bf16", **kwargs) -> list[list[int]]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    folder = _vllm_models.model_folder(kind)
    llm = LLM(model=str(folder), dtype="bfloat16", max_model_len=1024, enforce_eager=True, seed=0, **kwargs)
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0)
    try:
        out = []
        for prompt in ids:
            (r,) = llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)
            out.append(list(r.outputs[0].token_ids))
        return out
    finally:
        llm.llm_engine.engine_core.shutdown()


@torch.no_grad()
def _transformers(ids: list[list[int]], new_tokens: int, dtype: torch.dtype, int8: bool, eos: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    import llm_int8

    model = AutoModelForCausalLM.from_pretrained(_vllm_models.model_folder("bf16"), dtype=dtype).eval()
    if int8:
        llm_int8.quantize_model(model)
    out = []
    for prompt in ids:
        x = torch.tensor([prompt])
        seq = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=eos)[0, len(prompt):].tolist()  # fmt: skip
        out.append(seq[: seq.index(eos) + 1] if eos in seq else seq)  # vLLM stops at (and returns) the EOS token
    return out


def _compare(a: list[list[int]], b: list[list[int]]) -> dict:
    first = sum(x[:1] == y[:1] for x, y in zip(a, b, strict=True))
    identical = sum(x == y for x, y in zip(a, b, strict=True))
    shares = []
    for x, y in zip(a, b, strict=True):
        n = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
        shares.append(n / max(len(y), 1))
    return {"prompts": len(a), "first_token_same": first, "identical": identical,
            "matched_share_mean": round(sum(shares) / len(shares), 3)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--limit", type=int)
    p.add_argument("--out", type=Path, default=HERE / "vllm_agreement")
    args = p.parse_args()
    from transformers import AutoTokenizer

    from llm_int8.evaluation.agreement import chat_input_ids
    from llm_int8.evaluation.prompts import read_prompts

    tokenizer = AutoTokenizer.from_pretrained(_vllm_models.model_folder("bf16"))
    prompts = read_prompts(None, args.limit)
    ids = [chat_input_ids(tokenizer, pr.text)["input_ids"][0].tolist() for pr in prompts]
    eos = tokenizer.eos_token_id
    runs = {
        "vllm_int8": lambda: _vllm(ids, args.new_tokens, quantization="llm_int8"),
        "vllm_bf16": lambda: _vllm(ids, args.new_tokens),
        "hf_int8_bf16": lambda: _transformers(ids, args.new_tokens, torch.bfloat16, True, eos),
        "hf_bf16": lambda: _transformers(ids, args.new_tokens, torch.bfloat16, False, eos),
        "hf_fp32": lambda: _transformers(ids, args.new_tokens, torch.float32, False, eos),
        # tensor parallel 2 on the head-padded copy (the same function), against TP 1 on that copy
        "vllm_int8_padded_tp1": lambda: _vllm(ids, args.new_tokens, "padded", quantization="llm_int8"),
        "vllm_int8_padded_tp2": lambda: _vllm(ids, args.new_tokens, "padded", quantization="llm_int8",
                                              tensor_parallel_size=2),
    }  # fmt: skip
    partial = args.out.with_suffix(".partial.json")
    gens = json.loads(partial.read_text()) if partial.is_file() else {}  # a killed run goes on where it stopped
    for name, run in runs.items():
        if name not in gens:
            if name.endswith("tp2"):
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"  # one core per rank
            gens[name] = run()
            partial.write_text(json.dumps(gens))
    pairs = {f"{a} vs {b}": _compare(gens[a], gens[b]) for a, b in PAIRS}
    rows = ["| pair | first token the same | identical continuations | mean share matched |", "|---|---|---|---|"]
    for name, c in pairs.items():
        rows.append(f"| {name} | {c['first_token_same']} / {c['prompts']} | {c['identical']} / {c['prompts']} | "
                    f"{c['matched_share_mean']} |")  # fmt: skip
    text = "\n".join(rows) + "\n"
    per_prompt = [
        {"id": pr.id, "category": pr.category,
         **{k: tokenizer.decode(v[i], skip_special_tokens=True) for k, v in gens.items()}}
        for i, pr in enumerate(prompts)
    ]  # fmt: skip
    record = {"pairs": pairs, "prompts": per_prompt, "tokens": gens}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    args.out.with_suffix(".md").write_text(text)
    partial.unlink()
    print(text)


if __name__ == "__main__":
    main()
