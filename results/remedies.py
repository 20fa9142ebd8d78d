"""Remedies for the prompts where the int8 model parts from fp32, each measured on all three measures.

Usage: python results/remedies.py OUT_STEM MEASURES VARIANT [VARIANT ...]
  MEASURES: comma-separated, of agreement (the 66 built-in chat prompts, 16 greedy tokens;
            agreement:K the first K; agreement:A-B prompts A..B, a shard that
            results/agreement_report.py joins with the others),
            ppl:N (the first N WikiText-2 test tokens, windows of 512; ppl:all for the whole text),
            hellaswag:A-B (tasks A..B, per-task results appended to OUT_STEM.hellaswag.jsonl and
            read back on a rerun, so an interrupted run resumes)
  e.g. python results/remedies.py results/remedies_screen agreement,ppl:32768 default relcol@30 vproj-float
Writes OUT_STEM.json (every row, per-prompt agreement included) and OUT_STEM.md (the tables).

Variants (``VARIANTS`` below): the eval methods default / llm.int8 / calibrated / precise / bitsandbytes,
the 16-bit references bf16 / fp16 / bf16-weights / fp16-weights,
and candidates prototyped around ``Int8Linear`` (``llm_int8.evaluation.variants``): ``relcol@β`` (a
per-token outlier rule: a dim is an outlier where some token's |x| >= β x that token's mean |x|),
``floatrows@β`` (those tokens' rows in bf16 against the int8 weight), ``clip@κ`` (rows clipped to
κ x rms), ``vproj-float`` (value projections kept in float), ``vproj@3`` (value projections at
α = 3), and combinations.
"""

from __future__ import annotations

from _setup import HELLASWAG, arguments, atomic_write, hellaswag_tasks, library_variant, load, wikitext_ids, write_json

from llm_int8 import quantize_model
from llm_int8.evaluation import METHODS, TaskLog, compare_methods, read_prompts
from llm_int8.evaluation.report import agreement_table, markdown_table
from llm_int8.evaluation.variants import ClippedLinear, FloatRowsLinear, RelativeOutlierLinear, wrap_linears


def _relcol(beta: float, **kw):
    return lambda m: wrap_linears(quantize_model(m, **kw), lambda layer: RelativeOutlierLinear(layer, beta))


def _vproj_alpha(alpha: float):
    def convert(m):
        m = quantize_model(m, skip_modules=("lm_head", "v_proj"))
        return quantize_model(m, threshold=alpha)  # what is left in nn.Linear: the value projections

    return convert


VARIANTS = {
    name: METHODS[name]
    for name in (
        "fp32",
        "default",
        "llm.int8",
        "calibrated",
        "precise",
        "bitsandbytes",
        # the 16-bit references: the whole model cast, and the converted linears' weights rounded
        "bf16",
        "fp16",
        "bf16-weights",
        "fp16-weights",
    )
}
VARIANTS.update(
    {
        f"relcol@{b:g}": library_variant(
            f"relcol@{b:g}", f"default + per-token outlier rule, β = {b:g}", convert=_relcol(b)
        )
        for b in (20.0, 30.0, 50.0)
    }
)
VARIANTS.update(
    {
        f"floatrows@{b:g}": library_variant(
            f"floatrows@{b:g}",
            f"default, rows with a value >= {b:g} x mean |x| in bf16",
            convert=lambda m, b=b: wrap_linears(quantize_model(m), lambda layer: FloatRowsLinear(layer, b)),
        )
        for b in (30.0, 50.0)
    }
)
VARIANTS["clip@8"] = library_variant(
    "clip@8",
    "default on rows clipped to 8 x rms",
    convert=lambda m: wrap_linears(quantize_model(m), lambda layer: ClippedLinear(layer, 8.0)),
)
VARIANTS["vproj-float"] = library_variant("vproj-float", "default, value projections in float", keep_float=("v_proj",))
VARIANTS["vproj@3"] = library_variant("vproj@3", "default, value projections at α = 3", convert=_vproj_alpha(3.0))
VARIANTS["relcol@30+vproj-float"] = library_variant(
    "relcol@30+vproj-float",
    "per-token outlier rule β = 30, value projections in float",
    convert=_relcol(30.0, skip_modules=("lm_head", "v_proj")),
)


def _measures(text: str) -> dict:
    out = {}
    for part in text.split(","):
        key, _, value = part.partition(":")
        if key == "agreement" and "-" in value:  # prompts A..B (0-based, inclusive): a shard of a long run
            first, last = (int(v) for v in value.split("-"))
            out[key] = (first, last)
        elif key == "agreement":
            out[key] = int(value) if value else None
        elif key == "ppl" and value:
            out[key] = None if value == "all" else int(value)
        elif key == "hellaswag" and "-" in value:
            first, last = (int(v) for v in value.split("-"))
            out[key] = (first, last)
        else:
            raise ValueError(
                f"unknown measure {part!r} (agreement, agreement:K, agreement:A-B, ppl:N, ppl:all, hellaswag:A-B)"
            )
    return out


def main() -> None:
    stem, measures, *names = arguments(__doc__, str, _measures, str, ...)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    model, tok = load()
    ids = wikitext_ids(tok, measures["ppl"]) if "ppl" in measures else None
    tasks, log = None, None
    if "hellaswag" in measures:
        first, last = measures["hellaswag"]
        tasks = hellaswag_tasks(skip=first, limit=last - first + 1)
        log = TaskLog(f"{stem}.hellaswag.jsonl", {"model": "bundled", "hellaswag": str(HELLASWAG)}, resume=True)
    prompts = None
    if "agreement" in measures:
        chosen = measures["agreement"]
        if isinstance(chosen, tuple):
            prompts = read_prompts()[chosen[0] : chosen[1] + 1]
        else:
            prompts = read_prompts(limit=chosen)
    settings = {"measures": dict(measures), "variants": names}
    done: list[dict] = []

    def keep(row: dict) -> None:  # each finished row is on disk at once: a long run can be stopped
        done.append(row)
        write_json(f"{stem}.json", {"settings": settings, "results": done})
        print({k: v for k, v in row.items() if not isinstance(v, list)}, flush=True)

    rows = compare_methods(
        model,
        tok,
        [VARIANTS[n] for n in names],
        input_ids=ids,
        tasks=tasks,
        prompts=prompts,
        progress=True,
        task_log=log,
        on_result=keep,
    )
    tables = []
    if ids is not None or tasks:
        base = "fp32" if "fp32" in names else "default"
        tables.append(markdown_table(rows, baseline=base, labels=None if tasks is None else [t.label for t in tasks]))
    if prompts:
        tables.append(agreement_table(rows))
    atomic_write(f"{stem}.md", f"{settings}\n\n" + "\n".join(tables))
    print("\n".join(tables))


if __name__ == "__main__":
    main()
