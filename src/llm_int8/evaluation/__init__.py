"""Evaluating quantized models: perplexity (and, later, zero-shot tasks and the method comparison)."""

from .perplexity import PerplexityResult, perplexity, read_text, tokenize_text

__all__ = ["PerplexityResult", "perplexity", "read_text", "tokenize_text"]
