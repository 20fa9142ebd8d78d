"""Emergent outlier features (Section 4 of the LLM.int8() paper).

For hidden states ``X_l`` (tokens × h) at the measured sites (``hooks.find_sites``), a feature dim
``i`` is an *outlier feature* when

* some value has magnitude ``|X_l[t, i]| >= magnitude`` (α = 6.0),
* it does so in at least ``min_layers`` (25%) of the transformer layers (a layer counts when any
  of its sites has such a value in dim ``i``), and
* at at least ``min_seq`` (6%) of the sequence positions, a position ``t`` counting when
  ``|X_l[t, i]| >= α`` at any site of any layer (the paper: "across all hidden states ``X_l``").

For each outlier dim we report the quartiles of the magnitudes ``|x| >= α`` it takes, the fractions
of layers and positions, the count of such values (in all and per sequence), the share of positive
values and whether it is one-sided (all of one sign). Sequences are the non-overlapping windows
the text is cut into.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .hooks import Site, record_inputs

__all__ = ["OutlierCriteria", "OutlierStatistics", "find_outlier_features"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutlierCriteria:
    magnitude: float = 6.0
    min_layers: float = 0.25
    min_seq: float = 0.06

    def __post_init__(self) -> None:
        if not self.magnitude > 0:
            raise ValueError(f"magnitude must be > 0, got {self.magnitude}")
        for name in ("min_layers", "min_seq"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"{name} is a fraction in [0, 1], got {v}")


class OutlierStatistics:
    """Accumulates, over forward passes, what the criteria need; ``summary()`` applies them.

    Per site and dim: the running max ``|x|``, the count of ``|x| >= α`` and of ``|x| > 3.5``; per
    forward pass: which (position, dim) pairs reach α at any site; and every value ``>= α`` in
    magnitude (sparse: a few per dim and position), for the quartiles and signs.
    """

    def __init__(self, sites: list[Site], hidden: int, criteria: OutlierCriteria) -> None:
        self.sites = sites
        self.hidden = hidden
        self.criteria = criteria
        self.layers = sorted({s.layer for s in sites})
        n = len(sites)
        self.absmax = torch.zeros(n, hidden)  # (sites, h)
        self.count = torch.zeros(n, hidden, dtype=torch.long)  # (sites, h): values with |x| >= α
        self.count_3p5 = torch.zeros(n, hidden, dtype=torch.long)  # (sites, h): values with |x| > 3.5
        self.values_seen = torch.zeros(n, dtype=torch.long)  # per site: tokens seen
        self.decomposed = torch.zeros(n, dtype=torch.long)  # per site: Σ over forwards of |O| (dims >= α)
        self.forwards = 0
        self.tokens = 0
        self.sequences = 0
        self._position_masks: list[torch.Tensor] = []  # per forward: (tokens, h) bool, any site >= α
        self._current: torch.Tensor | None = None
        self._entries: list[torch.Tensor] = []  # (n, 3) float64 rows: site, dim, value

    def begin(self, tokens: int, sequences: int) -> None:
        """Start a forward pass over ``sequences`` sequences holding ``tokens`` tokens in all."""
        self._current = torch.zeros(tokens, self.hidden, dtype=torch.bool)
        self.tokens += tokens
        self.sequences += sequences
        self.forwards += 1

    def end(self) -> None:
        self._position_masks.append(self._current)
        self._current = None

    def observe(self, site_index: int, x: torch.Tensor) -> None:
        """``x``: the site's input, (..., h)."""
        if x.shape[-1] != self.hidden:
            raise ValueError(
                f"site {self.sites[site_index].name}: input has {x.shape[-1]} dims, expected {self.hidden}"
            )
        X = x.reshape(-1, self.hidden).float().cpu()  # (tokens, h)
        A = X.abs()
        hit = A >= self.criteria.magnitude  # (tokens, h)
        self.absmax[site_index] = torch.maximum(self.absmax[site_index], A.amax(0))
        self.count[site_index] += hit.sum(0)
        self.count_3p5[site_index] += (A > 3.5).sum(0)
        self.values_seen[site_index] += X.shape[0]
        self.decomposed[site_index] += int(hit.any(0).sum())
        if self._current is not None and self._current.shape[0] == X.shape[0]:
            self._current |= hit
        t, d = hit.nonzero(as_tuple=True)
        if t.numel():
            site = torch.full_like(d, site_index, dtype=torch.float64)
            self._entries.append(torch.stack([site, d.double(), X[t, d].double()], dim=1))  # (hits, 3)

    def summary(self) -> dict:
        """The outlier dims under the criteria and the totals, as a JSON-ready dict."""
        c = self.criteria
        n_layers = len(self.layers)
        layer_of_site = torch.tensor([self.layers.index(s.layer) for s in self.sites])
        per_layer = torch.zeros(n_layers, self.hidden, dtype=torch.long).index_add_(0, layer_of_site, self.count)
        layer_frac = (per_layer > 0).sum(0).double() / n_layers  # (h,)
        positions = (
            torch.cat(self._position_masks) if self._position_masks else torch.zeros(0, self.hidden, dtype=torch.bool)
        )
        seq_frac = positions.sum(0).double() / max(positions.shape[0], 1)  # (h,)
        is_outlier = (self.count.sum(0) > 0) & (layer_frac >= c.min_layers) & (seq_frac >= c.min_seq)
        dims = is_outlier.nonzero().squeeze(1).tolist()
        entries = torch.cat(self._entries) if self._entries else torch.zeros(0, 3, dtype=torch.float64)

        outliers = []
        for d in dims:
            v = entries[entries[:, 1] == d, 2]
            mag = v.abs()
            q = torch.quantile(mag, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
            positive = float((v > 0).double().mean())
            outliers.append(
                {
                    "dim": d,
                    "magnitude_quartiles": q,
                    "magnitude_max": float(mag.max()),
                    "min_value": float(v.min()),
                    "max_value": float(v.max()),
                    "fraction_of_layers": float(layer_frac[d]),
                    "layers": [self.layers[i] for i in (per_layer[:, d] > 0).nonzero().squeeze(1).tolist()],
                    "fraction_of_positions": float(seq_frac[d]),
                    "count": int(self.count[:, d].sum()),
                    "count_per_sequence": int(self.count[:, d].sum()) / max(self.sequences, 1),
                    "positive_fraction": positive,
                    "one_sided": positive in (0.0, 1.0),
                }
            )
        idx = torch.tensor(dims, dtype=torch.long)
        regular = ~is_outlier
        any_pos = positions[:, idx].any(1) if dims else torch.zeros(positions.shape[0], dtype=torch.bool)
        any_layer = (per_layer[:, idx] > 0).any(1) if dims else torch.zeros(n_layers, dtype=torch.bool)
        total_regular_values = int(self.values_seen.sum()) * int(regular.sum())
        sites_by_kind: dict[str, float] = {}
        for kind in dict.fromkeys(s.kind for s in self.sites):
            mask = torch.tensor([s.kind == kind for s in self.sites])
            sites_by_kind[kind] = float(self.decomposed[mask].sum()) / max(int(mask.sum()) * self.forwards, 1)
        totals = {
            "outlier_dims": len(dims),
            "outliers_per_sequence": int(self.count[:, idx].sum()) / max(self.sequences, 1) if dims else 0.0,
            "values_ge_magnitude_per_sequence": int(self.count.sum()) / max(self.sequences, 1),
            "dims_with_any_value_ge_magnitude": int((self.count.sum(0) > 0).sum()),
            "fraction_of_layers_affected": float(any_layer.double().mean()) if n_layers else 0.0,
            "fraction_of_positions_affected": float(any_pos.double().mean()) if positions.shape[0] else 0.0,
            "regular_dims_fraction_within_3.5": (
                1 - int(self.count_3p5[:, regular].sum()) / total_regular_values if total_regular_values else None
            ),
            "mean_decomposed_dims_per_forward": sites_by_kind,
        }
        return {
            "criteria": asdict(c),
            "sequences": self.sequences,
            "tokens": self.tokens,
            "layers": n_layers,
            "hidden": self.hidden,
            "sites": [
                {"name": s.name, "kind": s.kind, "layer": s.layer, "modules": [n for n, _ in s.modules]}
                for s in self.sites
            ],
            "outliers": outliers,
            "totals": totals,
        }


@torch.no_grad()
def find_outlier_features(
    model,
    input_ids: torch.Tensor,
    sites: list[Site],
    window: int = 2048,
    criteria: OutlierCriteria | None = None,
    progress: bool = False,
) -> OutlierStatistics:
    """Run ``model`` over ``input_ids`` (1-D) in non-overlapping windows, recording every site's input.

    Returns the accumulated ``OutlierStatistics``; call ``.summary()`` for the outlier dims.
    """
    criteria = criteria or OutlierCriteria()
    if input_ids.dim() != 1:
        raise ValueError(f"input_ids must be 1-D, got shape {tuple(input_ids.shape)}")
    n_windows = input_ids.numel() // window
    if n_windows == 0:
        raise ValueError(f"text has {input_ids.numel()} tokens, fewer than one window of {window}")
    hidden = _input_width(sites[0])
    kept = [s for s in sites if _input_width(s) == hidden]
    if len(kept) < len(sites):
        # e.g. an attention output whose width (heads x head_dim) differs from the model width
        logger.warning(
            "skipping %d site(s) whose input width is not %d: %s",
            len(sites) - len(kept),
            hidden,
            ", ".join(s.name for s in sites if s not in kept),
        )
    sites = kept
    stats = OutlierStatistics(sites, hidden, criteria)
    device = next(model.parameters()).device
    windows = input_ids[: n_windows * window].view(n_windows, window)  # (windows, window)
    with record_inputs(sites, stats.observe):
        for w in tqdm(windows, desc="outliers", unit="window", disable=not progress):
            stats.begin(tokens=window, sequences=1)
            model(w[None].to(device))
            stats.end()
    return stats


def _input_width(site: Site) -> int:
    module = site.modules[0][1]
    if hasattr(module, "in_features"):
        return module.in_features
    if hasattr(module, "nx"):  # GPT-2 Conv1D
        return module.nx
    return module.weight.shape[-1]
