"""Tiny random-init Hugging Face models (Llama, GPT-2 with Conv1D, OPT) for the integration tests."""

from __future__ import annotations

import torch

FAMILIES = ("llama", "gpt2", "opt")
VOCAB = 128


def tiny_model(family: str, dtype: torch.dtype = torch.float32, seed: int = 0, **overrides):
    """A 2-layer model of ``family`` in eval mode; weights scaled up so some activations pass the
    outlier threshold (the decomposition is exercised, not just the int8 path)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        OPTConfig,
        OPTForCausalLM,
    )

    torch.manual_seed(seed)
    if family == "llama":
        kwargs = dict(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        )
        cfg = LlamaConfig(**{**kwargs, **overrides})
        model = LlamaForCausalLM(cfg)
    elif family == "gpt2":
        cfg = GPT2Config(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
            **overrides,
        )
        model = GPT2LMHeadModel(cfg)
    elif family == "opt":
        cfg = OPTConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            ffn_dim=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            word_embed_proj_dim=64,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=1,
            **overrides,
        )
        model = OPTForCausalLM(cfg)
    else:
        raise ValueError(family)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)  # init std 0.02 -> 0.08: hidden states reach the outlier threshold
    return model.to(dtype).eval()


def input_ids(seed: int = 1, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (2, length), generator=g)


def logits(model, ids=None) -> torch.Tensor:
    with torch.no_grad():
        return model(ids if ids is not None else input_ids()).logits
