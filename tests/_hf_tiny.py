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


def word_tokenizer():
    """A word-level tokenizer over ``VOCAB`` words ``<unk> <pad> </s> w0 w1 ...`` (split on whitespace)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "</s>"] + [f"w{i}" for i in range(VOCAB - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def save_tiny_llama(folder):
    """A tiny Llama (seed 1, no special token ids) and ``word_tokenizer`` saved in ``folder``, for the CLI."""
    tiny_model("llama", seed=1, eos_token_id=None, pad_token_id=None, bos_token_id=None).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def input_ids(seed: int = 1, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (2, length), generator=g)


def logits(model, ids=None) -> torch.Tensor:
    with torch.no_grad():
        return model(ids if ids is not None else input_ids()).logits


ARCHITECTURES = ("llama", "gpt2", "opt", "qwen2", "mistral", "phi", "falcon", "gpt_neox", "bert", "t5")


def tiny_arch(name: str, seed: int = 0):
    """``(model, auto_class)``: a 2-layer random model of one of ``ARCHITECTURES`` (vocabulary ``VOCAB``,
    width 64), weights scaled as in ``tiny_model``; BERT is a masked LM, T5 a seq2seq LM."""
    import transformers as tf

    if name in FAMILIES:
        return tiny_model(name, seed=seed), tf.AutoModelForCausalLM
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    decoder = dict(common, intermediate_size=96, max_position_embeddings=64, tie_word_embeddings=False)
    auto = tf.AutoModelForCausalLM
    if name == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**decoder, num_key_value_heads=2))
    elif name == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(**decoder, num_key_value_heads=2))
    elif name == "phi":
        model = tf.PhiForCausalLM(tf.PhiConfig(**decoder))
    elif name == "falcon":
        model = tf.FalconForCausalLM(tf.FalconConfig(**common, tie_word_embeddings=False))
    elif name == "gpt_neox":
        model = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**decoder))
    elif name == "bert":
        model = tf.BertForMaskedLM(tf.BertConfig(**common, intermediate_size=96, max_position_embeddings=64))
        auto = tf.AutoModelForMaskedLM
    elif name == "t5":
        cfg = tf.T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4)
        model = tf.T5ForConditionalGeneration(cfg)
        auto = tf.AutoModelForSeq2SeqLM
    else:
        raise ValueError(name)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model.eval(), auto


def arch_logits(model, ids=None) -> torch.Tensor:
    """``logits`` for any of ``ARCHITECTURES`` (an encoder-decoder gets the ids on both sides)."""
    ids = ids if ids is not None else input_ids()
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return model(input_ids=ids, decoder_input_ids=ids).logits
        return model(ids).logits
