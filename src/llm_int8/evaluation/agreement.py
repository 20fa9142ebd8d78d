"""Agreement with the float model: does the int8 model say what the float model says?

Each prompt is wrapped in the model's chat template (as a user turn, generation prompt added) and
answered greedily for ``new_tokens`` tokens by the float reference and by the converted model.
Per prompt:

* ``first_token_same``: the two pick the same first token (argmax at the prompt's last position);
* ``logits_rel_error``: ``||l_q - l|| / ||l||`` of the logits at the prompt's last position, and
  ``logits_rel_error_centred``: the same with each logit vector's mean removed first. A shift of
  every logit by one constant leaves the next-token distribution as it is, but SmolLM2's logits
  have a mean of about 10 against a spread of about 3.5, so the plain error counts mostly such a
  shift (0.25 on "What is the capital of France?", of which 0.10 centred); the centred error and
  the KL measure what the distribution sees;
* ``kl``: ``KL(p_ref || p_q)`` of the next-token distributions there (nats);
* ``matched_tokens`` / ``matched_share``: how many of the reference's greedy tokens the converted
  model reproduces before its first difference, and that count over the reference's length;
* ``identical``: the whole continuation is the same token for token (an end-of-sequence token
  included, so two answers that stop at the same place are identical);
* ``ref_margin_logit`` / ``ref_margin_prob``: at the first difference, the reference's gap between
  its top two tokens (logits; probabilities), and ``ref_top2`` those tokens with their
  probabilities. A small gap is a knife edge: any perturbation, a float rounding included, may
  flip it; a large one is a real error.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .prompts import Prompt

__all__ = [
    "Generation",
    "TopTwo",
    "agreement_row",
    "chat_input_ids",
    "compare_generations",
    "generate",
    "measure_agreement",
    "reference_generations",
    "summarize_agreement",
]


@dataclass(frozen=True)
class TopTwo:
    """The two most likely next tokens at one step: ids, probabilities, and their logit gap."""

    tokens: tuple[int, int]
    probs: tuple[float, float]
    logit_gap: float


@dataclass(frozen=True)
class Generation:
    """A greedy continuation: its new tokens, the logits at the prompt's last position, and (for a
    reference) the top two tokens at every generated step."""

    tokens: tuple[int, ...]
    last_logits: torch.Tensor  # (vocab,) float32
    margins: tuple[TopTwo, ...] = ()


def chat_input_ids(tokenizer, prompt: str) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` (1, n) of ``prompt`` as a user turn in the tokenizer's chat template
    (the plain text where the tokenizer has none)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    else:
        enc = tokenizer(prompt, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask") if k in enc}


def _top_two(step_logits: torch.Tensor) -> TopTwo:
    logits = step_logits.float()
    top = logits.topk(2)
    probs = torch.softmax(logits, dim=-1)[top.indices]
    return TopTwo(tuple(top.indices.tolist()), tuple(probs.tolist()), (top.values[0] - top.values[1]).item())


@torch.no_grad()
def generate(model, tokenizer, prompt: str, new_tokens: int = 16, margins: bool = False) -> Generation:
    """Greedy ``new_tokens`` tokens (fewer where the model ends its turn) after ``prompt`` in the chat template."""
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in chat_input_ids(tokenizer, prompt).items()}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(
        **enc,
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = tuple(out.sequences[0, enc["input_ids"].shape[1] :].tolist())
    steps = out.logits  # one (1, vocab) per generated token
    gaps = tuple(_top_two(s[0]) for s in steps) if margins else ()
    return Generation(tokens, steps[0][0].float().cpu(), gaps)


def _centred_error(l_ref: torch.Tensor, l_q: torch.Tensor) -> float:
    c_ref, c_q = l_ref - l_ref.mean(), l_q - l_q.mean()
    return ((c_q - c_ref).norm() / c_ref.norm()).item()


def compare_generations(ref: Generation, other: Generation) -> dict:
    """The per-prompt measures of ``other`` against ``ref`` (module docstring)."""
    l_ref, l_q = ref.last_logits.double(), other.last_logits.double()
    logp_ref, logp_q = torch.log_softmax(l_ref, -1), torch.log_softmax(l_q, -1)
    matched = 0
    for a, b in zip(ref.tokens, other.tokens, strict=False):
        if a != b:
            break
        matched += 1
    identical = ref.tokens == other.tokens
    first_diff = None if identical else matched
    top2 = ref.margins[first_diff] if first_diff is not None and first_diff < len(ref.margins) else None
    return {
        "first_token_same": int(l_ref.argmax()) == int(l_q.argmax()),
        "logits_rel_error": ((l_q - l_ref).norm() / l_ref.norm()).item(),
        "logits_rel_error_centred": _centred_error(l_ref, l_q),
        "kl": (logp_ref.exp() * (logp_ref - logp_q)).sum().clamp_min(0).item(),
        "matched_tokens": matched,
        "reference_tokens": len(ref.tokens),
        "matched_share": matched / max(len(ref.tokens), 1),
        "identical": identical,
        "first_difference": first_diff,
        "ref_margin_logit": None if top2 is None else top2.logit_gap,
        "ref_margin_prob": None if top2 is None else top2.probs[0] - top2.probs[1],
        "ref_top2": None if top2 is None else {"tokens": list(top2.tokens), "probs": list(top2.probs)},
    }


def agreement_row(prompt: Prompt, ref: Generation, other: Generation, tokenizer) -> dict:
    """``compare_generations`` with the prompt's id and category and both continuations as text."""
    return {
        "id": prompt.id,
        "category": prompt.category,
        **compare_generations(ref, other),
        "reference_text": tokenizer.decode(list(ref.tokens), skip_special_tokens=True),
        "text": tokenizer.decode(list(other.tokens), skip_special_tokens=True),
    }


def summarize_agreement(rows: list[dict]) -> dict:
    """Totals over prompts: counts, median / max logits errors (plain, centred), mean / median / max KL,
    mean matched share."""
    if not rows:
        raise ValueError("no agreement row to summarize")
    err = [r["logits_rel_error"] for r in rows]
    centred = [r["logits_rel_error_centred"] for r in rows]
    kl = [r["kl"] for r in rows]
    return {
        "prompts": len(rows),
        "first_token_same": sum(r["first_token_same"] for r in rows),
        "logits_rel_error_median": statistics.median(err),
        "logits_rel_error_max": max(err),
        "logits_rel_error_centred_median": statistics.median(centred),
        "logits_rel_error_centred_max": max(centred),
        "kl_mean": statistics.fmean(kl),
        "kl_median": statistics.median(kl),
        "kl_max": max(kl),
        "matched_share_mean": statistics.fmean(r["matched_share"] for r in rows),
        "identical": sum(r["identical"] for r in rows),
    }


def reference_generations(
    model, tokenizer, prompts: list[Prompt], new_tokens: int = 16, progress: bool = False, desc: str = "reference"
) -> list[Generation]:
    """The float model's greedy continuations, with the top-two gaps at every step."""
    return [
        generate(model, tokenizer, p.text, new_tokens, margins=True)
        for p in tqdm(prompts, desc=desc, unit="prompt", disable=not progress)
    ]


def measure_agreement(
    model,
    tokenizer,
    prompts: list[Prompt],
    references: list[Generation],
    new_tokens: int = 16,
    progress: bool = False,
    desc: str = "agreement",
) -> list[dict]:
    """Per-prompt rows of ``model`` against the ``references`` (from ``reference_generations``)."""
    if len(prompts) != len(references):
        raise ValueError(f"{len(prompts)} prompts but {len(references)} reference generations")
    rows = []
    pairs = list(zip(prompts, references, strict=True))
    for prompt, ref in tqdm(pairs, desc=desc, unit="prompt", disable=not progress):
        rows.append(agreement_row(prompt, ref, generate(model, tokenizer, prompt.text, new_tokens), tokenizer))
    return rows
