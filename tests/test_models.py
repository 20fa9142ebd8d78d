"""Real models: SmolLM2-135M (GGUF) perplexity and predictions, MiniLM sentence embeddings."""

from __future__ import annotations

import copy

import pytest
import torch

from llm_int8 import Int8Linear, quantize_model
from llm_int8.evaluation import perplexity, read_text, tokenize_text

pytestmark = pytest.mark.slow

WINDOW = 512
TOKENS = 4 * WINDOW  # a WikiText-2 slice; the full-text numbers are in RESULTS.md
# Measured on this slice (README, "Accuracy"): fp32 25.494; the default (zeropoint activations, α = 6)
# 25.628 (+0.52%); the paper's absmax LLM.int8() 25.873 (+1.49%); vector-wise int8 (no decomposition)
# worse. SmolLM2's RMSNorm outputs are skewed and ~10x smaller than the hidden states α = 6 was chosen
# for, so symmetric per-token codes waste half their range (RESULTS.md, section 3).
DEFAULT_BOUND = 0.01
PAPER_BOUND = 0.02


@pytest.fixture(scope="module")
def smollm2_int8(smollm2):
    model, _ = smollm2
    return quantize_model(copy.deepcopy(model))


@pytest.fixture(scope="module")
def wikitext_ids(smollm2, wikitext_path):
    _, tokenizer = smollm2
    return tokenize_text(tokenizer, read_text(wikitext_path), TOKENS)


def test_every_decoder_linear_is_int8_and_lm_head_is_not(smollm2_int8):
    layers = [m for m in smollm2_int8.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 30 * 7  # q, k, v, o, gate, up, down in each of 30 blocks
    assert isinstance(smollm2_int8.lm_head, torch.nn.Linear)


def test_smollm2_perplexity_close_to_fp32_and_better_than_vectorwise(smollm2, smollm2_int8, wikitext_ids):
    model, _ = smollm2
    ppl_fp32 = perplexity(model, wikitext_ids, window=WINDOW).perplexity
    ppl_int8 = perplexity(smollm2_int8, wikitext_ids, window=WINDOW).perplexity
    vectorwise = quantize_model(copy.deepcopy(model), threshold=0.0)
    ppl_vectorwise = perplexity(vectorwise, wikitext_ids, window=WINDOW).perplexity
    paper = quantize_model(copy.deepcopy(model), threshold=6.0, activation="absmax")
    ppl_paper = perplexity(paper, wikitext_ids, window=WINDOW).perplexity
    assert 5 < ppl_fp32 < 100  # a real model on real text, not noise
    assert abs(ppl_int8 / ppl_fp32 - 1) < DEFAULT_BOUND, (ppl_fp32, ppl_int8)
    assert ppl_int8 < ppl_vectorwise, (ppl_int8, ppl_vectorwise)  # the decomposition is what helps
    assert abs(ppl_paper / ppl_fp32 - 1) < PAPER_BOUND, (ppl_fp32, ppl_paper)
    assert ppl_int8 < ppl_paper, (ppl_int8, ppl_paper)  # zeropoint activations are what helps next


def test_smollm2_next_token_predictions_agree(smollm2, smollm2_int8, wikitext_ids):
    model, _ = smollm2
    ids = wikitext_ids[:WINDOW][None]
    with torch.no_grad():
        top_fp32 = model(ids).logits.argmax(-1)
        top_int8 = smollm2_int8(ids).logits.argmax(-1)
    agreement = (top_fp32 == top_int8).float().mean().item()
    assert agreement > 0.95, agreement  # measured 0.967 (the paper's absmax LLM.int8(): 0.936) on these 512 tokens


def test_minilm_sentence_embeddings_keep_their_direction(minilm_path):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path, dtype=torch.float32).eval()
    sentences = [
        "The cat sits on the mat.",
        "Quantization stores weights in eight bits.",
        "Paris is the capital of France.",
        "Large language models have emergent outlier features.",
        "He played the violin at the concert last night.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")

    def embed(m):
        with torch.no_grad():
            hidden = m(**batch).last_hidden_state  # (sentences, tokens, 384)
        mask = batch["attention_mask"][..., None].float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)  # mean pooling, as sentence-transformers does
        return torch.nn.functional.normalize(pooled, dim=-1)

    ref = embed(model)
    _, report = quantize_model(model, return_report=True)
    assert len(report.converted) == 6 * 6 + 1  # q, k, v, attn out, intermediate, output per layer; pooler
    cosine = (embed(model) * ref).sum(-1)
    assert cosine.min().item() >= 0.995, cosine
