"""Peak memory of loading a float16 checkpoint as an int8 model: streaming vs load-then-convert.

Builds (once, in a temp folder, not committed) a random-init Llama checkpoint of ~0.5B parameters
in fp16, sharded, then runs each loader in a fresh subprocess and records the growth of its peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` right before the load) against the
size of the int8 model it produced (every parameter and buffer, scales included).

    python benchmarks/bench_loading.py                  # ~0.5B params, writes benchmarks/results/loading.{csv,md}
    python benchmarks/bench_loading.py --layers 2       # quick check

Modes: ``streaming`` (``llm_int8.from_pretrained``), ``hf-quantizer`` (``AutoModelForCausalLM.from_pretrained(...,
quantization_config=LLMInt8Config())``), ``load-then-convert`` (fp16 ``from_pretrained`` + ``quantize_model``),
``reload-int8`` (``llm_int8.from_pretrained`` of the saved int8 folder).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import smoke_arguments, write_csv, write_text

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("streaming", "hf-quantizer", "load-then-convert", "reload-int8")


HEADS, KV_HEADS = 12, 4


def _config(layers: int, hidden: int, intermediate: int, vocab: int):
    from transformers import LlamaConfig

    # by default (1536, 4096, 32000): ~25.2M linear parameters per layer, 2 x 49M for the untied embedding and head
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        tie_word_embeddings=False,
        dtype="float16",
    )


def build_checkpoint(folder: Path, layers: int, shard: str, sizes: tuple[int, int, int]) -> int:
    """Save a random-init fp16 Llama (``sizes``: hidden, intermediate, vocab) in shards of at most ``shard``."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_default_dtype(torch.float16)
    with torch.no_grad():
        model = LlamaForCausalLM(_config(layers, *sizes))
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, max_shard_size=shard)
    return n_params


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def child(mode: str, folder: str) -> None:
    """Run one load in this (fresh) process; print a JSON line with the memory numbers."""
    import torch

    # warm up: import the model's modules and build its skeleton on meta, so the measured growth
    # is the weights, not Python modules imported lazily by the first load
    from transformers import AutoConfig, AutoModelForCausalLM

    import llm_int8

    with torch.device("meta"):
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    if mode in ("streaming", "reload-int8"):
        model = llm_int8.from_pretrained(folder, progress=False)
    elif mode == "hf-quantizer":
        model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=llm_int8.LLMInt8Config())
    elif mode == "load-then-convert":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float16)
        llm_int8.quantize_model(model)
    else:
        raise ValueError(mode)
    seconds = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    after = _rss_kib("VmRSS")
    tensors = {t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}
    n_int8 = sum(isinstance(m, llm_int8.Int8Linear) for m in model.modules())
    print(
        json.dumps(
            {
                "mode": mode,
                "model_bytes": sum(tensors.values()),
                "peak_growth_bytes": (peak - before) * 1024,
                "final_growth_bytes": (after - before) * 1024,
                "seconds": seconds,
                "int8_layers": n_int8,
                "dtype": str(next(model.parameters()).dtype),
            }
        )
    )


def _dir_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".safetensors")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16, help="decoder layers (16 = ~0.5B parameters)")
    parser.add_argument("--hidden-size", type=int, default=1536, help=f"a multiple of {HEADS} (the heads)")
    parser.add_argument("--intermediate-size", type=int, default=4096)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--shard", default="200MB", help="max shard size of the fp16 checkpoint")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--workdir", help="reuse / keep the checkpoints here (default: a temp dir, removed after)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of loading.{csv,md}")
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    small = {"layers": 1, "hidden_size": 96, "intermediate_size": 192, "vocab_size": 512, "shard": "100KB"}
    args = smoke_arguments(parser, argv, **small)
    if args.hidden_size % HEADS:
        parser.error(f"--hidden-size must be a multiple of {HEADS} (the attention heads), got {args.hidden_size}")
    if args._child:
        child(*args._child)
        return 0
    if args.workdir:
        return _run(args, Path(args.workdir))
    with tempfile.TemporaryDirectory(prefix="bench_loading_") as work:
        return _run(args, Path(work))


def _run(args, work: Path) -> int:
    """Build (or reuse) the checkpoints in ``work``, load each mode in a fresh process, write the results."""
    fp16_dir, int8_dir = work / "fp16", work / "int8"
    if not (fp16_dir / "config.json").is_file():
        sizes = (args.hidden_size, args.intermediate_size, args.vocab_size)
        n_params = build_checkpoint(fp16_dir, args.layers, args.shard, sizes)
        print(f"built {n_params / 1e9:.3f}B-parameter fp16 checkpoint in {fp16_dir}", flush=True)
    else:
        from llm_int8.integrations.huggingface.checkpoint import CheckpointShards

        n_params = sum(math.prod(i.shape) for i in CheckpointShards(fp16_dir).read_headers().values())
    if "reload-int8" in args.modes and not (int8_dir / "config.json").is_file():
        import llm_int8

        llm_int8.save_pretrained(
            llm_int8.from_pretrained(fp16_dir, progress=False), int8_dir, max_shard_size=args.shard
        )

    rows = []
    for mode in args.modes:
        folder = int8_dir if mode == "reload-int8" else fp16_dir
        proc = subprocess.run(
            [sys.executable, __file__, "--_child", mode, str(folder)],
            capture_output=True,
            text=True,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["peak_vs_model"] = row["peak_growth_bytes"] / row["model_bytes"]
        rows.append(row)
        print(
            f"{mode:>18}: peak RSS growth {row['peak_growth_bytes'] / 2**20:8.1f} MiB = "
            f"{row['peak_vs_model']:.2f}x the int8 model ({row['model_bytes'] / 2**20:.1f} MiB), "
            f"{row['seconds']:.1f} s",
            flush=True,
        )

    disk = {"fp16": _dir_bytes(fp16_dir)}
    if int8_dir.is_dir():
        disk["int8"] = _dir_bytes(int8_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "loading.csv", rows)
    lines = [
        f"# Loading a {args.layers}-layer Llama ({n_params / 1e9:.3f}B params) fp16 checkpoint as int8",
        "",
        f"Command: `python benchmarks/bench_loading.py --layers {args.layers} --hidden-size {args.hidden_size} "
        f"--intermediate-size {args.intermediate_size} --vocab-size {args.vocab_size} --shard {args.shard}`; "
        f"fp16 shards of at most {args.shard}. Peak RSS growth = VmHWM after the load minus VmRSS before it, "
        "in a fresh process per mode.",
        "",
        "| mode | peak RSS growth (MiB) | final RSS growth (MiB) | int8 model (MiB) | peak / model | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['peak_growth_bytes'] / 2**20:.1f} | {r['final_growth_bytes'] / 2**20:.1f} | "
            f"{r['model_bytes'] / 2**20:.1f} | {r['peak_vs_model']:.2f}x | {r['seconds']:.1f} |"
        )
    lines += ["", "| on disk | MiB |", "| --- | --- |"]
    lines += [f"| {k} safetensors | {v / 2**20:.1f} |" for k, v in disk.items()]
    write_text(args.out / "loading.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
