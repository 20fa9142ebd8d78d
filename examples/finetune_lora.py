"""LoRA fine-tuning of an int8 model: the bundled SmolLM2-135M on WikiText-2 lines, with peft.

    python3 examples/finetune_lora.py                       # this library (llm_int8 Int8Linear base)
    python3 examples/finetune_lora.py --backend bitsandbytes  # the same run on peft + bitsandbytes
    python3 examples/finetune_lora.py --backend both --out results/finetune_lora
        # both, one after the other, each in its own process, then <out>.json / .md / .png side by side

The defaults (12 steps of 2 x 32 tokens) keep each run to minutes on a small shared CPU; raise
``--steps`` / ``--seq-len`` for a real fine-tune.

The recipe itself is five lines: load, ``quantize_model``, ``prepare_model_for_kbit_training``,
``get_peft_model``, train. The int8 weights stay frozen; only the LoRA adapters (q, k, v, o) train.
Both backends start from the same float checkpoint, the same seed (so the same adapter init and the
same batches) and the same optimiser. The closing lines give the held-out loss before and after, the
training-loss curve, and the peak resident memory (process lifetime, and sampled during training).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "wikitext-2" / "test.txt"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="WikiText-2 text file (default: %(default)s)")
    p.add_argument("--backend", choices=["llm_int8", "bitsandbytes", "both"], default="llm_int8")
    p.add_argument("--model", default=None, help="model for llm_int8.load_model (default: the bundled SmolLM2-135M)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--eval-batches", type=int, default=2, help="held-out batches for the loss before / after")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    p.add_argument("--out", type=Path, default=None, help="write <out>.json (and with --backend both .md, .png)")
    return p.parse_args(argv)


def token_blocks(path: Path, tokenizer, seq_len: int) -> torch.Tensor:
    """The file's non-empty, non-heading lines, tokenized, joined and cut into (n, seq_len) blocks."""
    if not path.is_file():
        raise SystemExit(f"no WikiText-2 file at {path}; pass --data")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    text = "\n".join(ln for ln in lines if ln and not ln.startswith("="))
    ids = torch.tensor(tokenizer(text)["input_ids"])
    n = ids.numel() // seq_len
    return ids[: n * seq_len].view(n, seq_len)  # (blocks, seq_len)


class PeakRSS:
    """Samples this process's resident memory (``/proc/self/statm``) every 20 ms; ``peak`` in bytes."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def load_int8(backend: str, source):
    """(model, tokenizer): the float checkpoint with its linear layers in 8 bits, by ``backend``."""
    import llm_int8

    model, tokenizer = llm_int8.load_model(source, dtype=torch.float32)
    if backend == "llm_int8":
        return llm_int8.quantize_model(model), tokenizer
    # bitsandbytes' route: transformers quantizes a float folder while loading it
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    # the bundled model is GGUF, which transformers dequantized to float while loading: drop that
    # marker, or it refuses to save the (float) model
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        del model
        bnb = BitsAndBytesConfig(load_in_8bit=True)
        return AutoModelForCausalLM.from_pretrained(tmp, quantization_config=bnb, dtype=torch.float32), tokenizer


@torch.no_grad()
def mean_loss(model, blocks: torch.Tensor, batch_size: int) -> float:
    model.eval()
    losses = [model(input_ids=b, labels=b).loss.item() for b in blocks.split(batch_size)]
    return sum(losses) / len(losses)


def run(args: argparse.Namespace) -> dict:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    model, tokenizer = load_int8(args.backend, args.model)
    blocks = token_blocks(args.data, tokenizer, args.seq_len)
    n_eval = args.eval_batches * args.batch_size
    held_out, train = blocks[:n_eval], blocks[n_eval:]
    order = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(args.seed))

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    torch.manual_seed(args.seed)  # the same adapter init for both backends
    config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=TARGETS)
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)

    before = mean_loss(model, held_out, args.batch_size)
    print(f"[{args.backend}] {trainable:,} trainable parameters; held-out loss before: {before:.4f}", flush=True)
    curve, start = [], time.perf_counter()
    with PeakRSS() as rss:
        model.train()
        for step in range(args.steps):
            idx = order[(step * args.batch_size + torch.arange(args.batch_size)) % train.shape[0]]
            batch = train[idx]  # (batch, seq_len)
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            curve.append(loss.item())
            elapsed = time.perf_counter() - start
            print(
                f"[{args.backend}] step {step + 1:3d}/{args.steps}  loss {curve[-1]:.4f}  {elapsed:6.1f} s", flush=True
            )
    seconds = time.perf_counter() - start
    after = mean_loss(model, held_out, args.batch_size)
    peak_life = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    result = {
        "backend": args.backend,
        "loss_before": before,
        "loss_after": after,
        "train_loss": curve,
        "train_seconds": seconds,
        "peak_rss_training_mib": rss.peak / 2**20,
        "peak_rss_process_mib": peak_life / 2**20,
        "trainable_parameters": trainable,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "versions": _versions(),
    }
    print(f"[{args.backend}] held-out loss {before:.4f} -> {after:.4f} after {args.steps} steps ({seconds:.0f} s)")
    print(
        f"[{args.backend}] peak memory (RSS): {result['peak_rss_training_mib']:.0f} MiB while training, "
        f"{result['peak_rss_process_mib']:.0f} MiB over the whole process (float load included)"
    )
    return result


def _versions() -> dict:
    import importlib.metadata as md

    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for name in ("transformers", "peft", "bitsandbytes", "llm-int8"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def run_both(args: argparse.Namespace, argv: list[str]) -> None:
    """Each backend in a fresh process (so the peak memory is its own), then the comparison files."""
    out = args.out or REPO / "results" / "finetune_lora"
    results = []
    for backend in ("llm_int8", "bitsandbytes"):
        single = Path(f"{out}_{backend}.json")
        cmd = [
            sys.executable,
            __file__,
            *_without(argv, "--backend", "--out"),
            "--backend",
            backend,
            "--out",
            str(single),
        ]
        subprocess.run(cmd, check=True)
        results.append(json.loads(single.read_text()))
        single.unlink()
    write_comparison(results, Path(out))


def _without(argv: list[str], *flags: str) -> list[str]:
    """``argv`` less each ``--flag value`` / ``--flag=value`` of ``flags``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif not arg.startswith(tuple(f + "=" for f in flags)):
            out.append(arg)
    return out


def write_comparison(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    cpu_flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    payload = {"runs": results, "cpu_flags": cpu_flags.split(":", 1)[-1].strip()}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    s = results[0]["settings"]
    lines = [
        "# LoRA fine-tuning on an int8 base: llm_int8 vs peft + bitsandbytes",
        "",
        f"SmolLM2-135M (bundled), WikiText-2 test lines, {s['steps']} AdamW steps (lr {s['lr']}), batch "
        f"{s['batch_size']} x {s['seq_len']} tokens, LoRA r={s['rank']} on {', '.join(TARGETS)}, seed {s['seed']}; "
        f"held-out loss over {s['eval_batches']} batches. CPU, {results[0]['versions']['threads']} threads.",
        "",
        "| backend | held-out loss before | after | train loss, first step | last step | train time (s) "
        "| peak RSS training (MiB) | peak RSS process (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['backend']} | {r['loss_before']:.4f} | {r['loss_after']:.4f} | {r['train_loss'][0]:.4f} "
            f"| {r['train_loss'][-1]:.4f} | {r['train_seconds']:.0f} | {r['peak_rss_training_mib']:.0f} "
            f"| {r['peak_rss_process_mib']:.0f} |"
        )
    lines += ["", "Training loss per step:", "", "| step | " + " | ".join(r["backend"] for r in results) + " |"]
    lines.append("|---" * (len(results) + 1) + "|")
    for i in range(len(results[0]["train_loss"])):
        lines.append(f"| {i + 1} | " + " | ".join(f"{r['train_loss'][i]:.4f}" for r in results) + " |")
    lines += ["", f"Versions: {results[0]['versions']}", "", f"CPU flags: `{payload['cpu_flags']}`", ""]
    out.with_suffix(".md").write_text("\n".join(lines))

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ax.plot(range(1, len(r["train_loss"]) + 1), r["train_loss"], label=f"{r['backend']} (train)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title("LoRA on int8 SmolLM2-135M, WikiText-2")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.json')}, .md, .png")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.backend == "both":
        run_both(args, argv)
        return
    result = run(args)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
