"""SmolLM2-135M-Instruct as the folders vLLM serves: bf16 safetensors, a saved int8 folder, a head-padded copy.

vLLM reads Hugging Face folders; the bundled model is a GGUF file, so it is loaded with transformers
(``llm_int8.load_model``) and written once, with its tokenizer, under ``LLM_INT8_VLLM_MODELS``
(default ``~/.cache/llm-int8/vllm-models``), each folder atomically. Used by the vLLM tests and
``benchmarks/bench_vllm.py``.

``padded``: tensor parallelism needs head counts divisible by the TP size, and SmolLM2 has 9 query /
3 KV heads. The copy has 12 / 4 (head_dim 64 kept; the three new query heads form the new KV group),
the new heads' q / k / v rows and o_proj columns zero: their attention output is 0 and o_proj adds
nothing, so it is the same function as the original.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

ROOT = Path(os.environ.get("LLM_INT8_VLLM_MODELS", Path.home() / ".cache" / "llm-int8" / "vllm-models"))
KINDS = ("bf16", "int8", "padded")


def model_folder(kind: str) -> Path:
    """The folder of ``kind`` (one of ``KINDS``), written on first use."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = ROOT / kind
    if (path / "config.json").is_file():
        return path
    import llm_int8
    from llm_int8.integrations.huggingface.saving import atomic_directory

    model, tokenizer = llm_int8.load_model(None, dtype=torch.bfloat16)
    # the GGUF file's weights are dequantized float tensors now: saved as a plain float model
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if kind == "int8":
        llm_int8.quantize_model(model)
        llm_int8.save_pretrained(model, path, tokenizer=tokenizer, overwrite=True)
        return path
    if kind == "padded":
        _pad_heads(model, q_heads=12, kv_heads=4)
    with atomic_directory(path, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return path


def _pad_rows(linear: torch.nn.Linear, rows: int) -> None:
    W = linear.weight.data  # (out, in)
    linear.weight.data = torch.cat([W, W.new_zeros(rows - W.shape[0], W.shape[1])])
    linear.out_features = rows


@torch.no_grad()
def _pad_heads(model, q_heads: int, kv_heads: int) -> None:
    """Zero-pad every attention layer to ``q_heads`` / ``kv_heads`` heads (the group size kept)."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    group = config.num_attention_heads // config.num_key_value_heads
    if q_heads // kv_heads != group or q_heads % kv_heads:
        raise ValueError(f"{q_heads} / {kv_heads} heads change the group size {group}")
    for layer in model.model.layers:
        attn = layer.self_attn
        _pad_rows(attn.q_proj, q_heads * head_dim)  # new query heads: q = 0
        _pad_rows(attn.k_proj, kv_heads * head_dim)
        _pad_rows(attn.v_proj, kv_heads * head_dim)  # new KV group: v = 0, so its heads output 0
        W = attn.o_proj.weight.data  # (hidden, heads * head_dim)
        attn.o_proj.weight.data = torch.cat([W, W.new_zeros(W.shape[0], q_heads * head_dim - W.shape[1])], dim=1)
        attn.o_proj.in_features = q_heads * head_dim
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = q_heads, kv_heads, head_dim
