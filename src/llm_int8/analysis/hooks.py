"""Where the paper measures hidden states, and forward hooks that are always removed.

Section 4 of the paper measures the inputs of the attention projections (query, key, value,
output) and of the FFN expansion layer; the attention function and the FFN contraction are left
out. A *site* is one such input. Projections that read the same tensor (Llama's q/k/v, and its
gate/up) form one site: it is recorded once, through its first module, so a value is not counted
three times, while an ablation edits the input of every module of the site.

Modules per architecture (``model.config.model_type``), per transformer layer:

* Llama family (``llama``, ``mistral``, ``qwen2``, ``qwen3``, ``gemma``, ``phi3``-style names):
  ``self_attn.{q,k,v}_proj`` | ``self_attn.o_proj`` | ``mlp.{gate,up}_proj``
* GPT-2: ``attn.c_attn`` (fused q/k/v) | ``attn.c_proj`` | ``mlp.c_fc``
* BERT / RoBERTa: ``attention.self.{query,key,value}`` | ``attention.output.dense`` | ``intermediate.dense``
* OPT: ``self_attn.{q,k,v}_proj`` | ``self_attn.out_proj`` | ``fc1``

Other models: pass regular expressions matched (``re.search``) against module names; each matching
module is its own site.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["SITE_PATTERNS", "Site", "find_sites", "record_inputs", "zero_input_dims"]

# model_type -> {site kind: module-name suffixes that read the same input tensor}
_LLAMA = {
    "attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn_out": ("self_attn.o_proj",),
    "ffn_in": ("mlp.gate_proj", "mlp.up_proj"),
}
SITE_PATTERNS: dict[str, dict[str, tuple[str, ...]]] = {
    **{t: _LLAMA for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "smollm3", "olmo")},
    "gpt2": {"attn_in": ("attn.c_attn",), "attn_out": ("attn.c_proj",), "ffn_in": ("mlp.c_fc",)},
    **{
        t: {
            "attn_in": ("attention.self.query", "attention.self.key", "attention.self.value"),
            "attn_out": ("attention.output.dense",),
            "ffn_in": ("intermediate.dense",),
        }
        for t in ("bert", "roberta")
    },
    "opt": {
        "attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "attn_out": ("self_attn.out_proj",),
        "ffn_in": ("fc1",),
    },
}
"""Measured inputs per architecture: site kind -> suffixes of the modules that share that input."""

_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


@dataclass(frozen=True)
class Site:
    """One measured hidden state: the input of ``modules`` (which all read the same tensor)."""

    name: str  # the first module's name, e.g. "model.layers.3.self_attn.q_proj"
    kind: str  # "attn_in", "attn_out", "ffn_in", or "custom"
    layer: int  # transformer layer index
    modules: tuple[tuple[str, nn.Module], ...]


def _layer_of(name: str) -> int:
    m = _LAYER_INDEX.search(name)
    if m is None:
        raise ValueError(f"cannot tell the transformer layer of module {name!r}: no numeric path component")
    return int(m.group(1))


def find_sites(model: nn.Module, patterns: Sequence[str] | None = None) -> list[Site]:
    """The measured inputs of ``model``, ordered by layer then kind.

    ``patterns``: regular expressions over module names, overriding the per-architecture table
    (needed for an architecture not in ``SITE_PATTERNS``).
    """
    named = dict(model.named_modules())
    sites: list[Site] = []
    if patterns:
        regexes = [re.compile(p) for p in patterns]
        for name, module in named.items():
            if name and any(r.search(name) for r in regexes):
                sites.append(Site(name, "custom", _layer_of(name), ((name, module),)))
        if not sites:
            raise ValueError(f"no module name matches {list(patterns)}")
    else:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        table = SITE_PATTERNS.get(model_type)
        if table is None:
            raise ValueError(
                f"unknown architecture {model_type!r} (known: {', '.join(sorted(SITE_PATTERNS))}); "
                "pass module name patterns (--modules) for the attention projections and FFN expansion inputs"
            )
        order = list(table)
        for name in named:
            for kind, suffixes in table.items():
                if name.endswith("." + suffixes[0]):
                    prefix = name[: -len(suffixes[0])]
                    members = tuple((prefix + s, named[prefix + s]) for s in suffixes if prefix + s in named)
                    sites.append(Site(name, kind, _layer_of(name), members))
        if not sites:
            raise ValueError(f"no {model_type} attention/FFN projection found in the model")
        sites.sort(key=lambda s: (s.layer, order.index(s.kind)))
    return sites


@contextmanager
def record_inputs(sites: Sequence[Site], fn: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """Call ``fn(site_index, X)`` with each site's input ``X`` on every forward; hooks removed on exit.

    Only the first module of a site is hooked (its other modules read the same tensor).
    """
    handles = []
    try:
        for i, site in enumerate(sites):

            def hook(module, args, _i=i):
                fn(_i, args[0].detach())

            handles.append(site.modules[0][1].register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def zero_input_dims(sites: Sequence[Site], dims: Sequence[int] | torch.Tensor) -> Iterator[None]:
    """Zero the feature dims ``dims`` of the input of every module of every site; hooks removed on exit.

    The caller's tensor is not modified: each hook returns a zeroed copy.
    """
    index = torch.as_tensor(list(dims) if not isinstance(dims, torch.Tensor) else dims, dtype=torch.long)
    handles = []

    def hook(module, args):
        x = args[0]
        return (x.index_fill(-1, index.to(x.device), 0), *args[1:])

    try:
        for site in sites:
            for _, module in site.modules:
                handles.append(module.register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
