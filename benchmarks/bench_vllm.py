"""vLLM serving SmolLM2-135M: llm_int8 against vLLM's own bf16 and fp32, offline and through the OpenAI server.

    flock /tmp/llm-int8-timing.lock .venv-vllm/bin/python benchmarks/bench_vllm.py        # the full run
    .venv-vllm/bin/python benchmarks/bench_vllm.py --smoke --out /tmp/x                    # mechanics, minutes

For each method, one engine at a time (never two competing for the two cores):

* offline: ``LLM.generate`` on batches of real-text prompts (WikiText-2 windows of ``--prompt-tokens``
  tokens, ``ignore_eos``, greedy, prefix caching off), ``--rounds`` times, the fastest taken; generated
  tokens per second and all tokens (prompt + generated) per second;
* the engine's start-up time (``LLM(...)`` returning) and resident memory (RSS of the engine's processes
  after the batches: the worker holds the weights and the KV cache);
* server: ``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1, streaming completions at each
  ``--concurrency`` (a bounded number of requests per level): time to the first token (median, p90)
  and generated tokens per second; its start-up time (to ``/health``).

llm_int8 quantizes the bf16 folder online (``--quantization llm_int8``); bf16 and fp32 are vLLM's own
float paths (oneDNN). Writes ``vllm.csv``, ``vllm.md`` and ``vllm.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import _vllm_models  # noqa: E402
import _vllm_server  # noqa: E402
from _common import markdown_table, run_info, write_csv, write_text  # noqa: E402

METHODS = {
    "llm_int8": {"dtype": "bfloat16", "quantization": "llm_int8"},
    "bf16": {"dtype": "bfloat16"},
    "fp32": {"dtype": "float32"},
}
MAX_MODEL_LEN = 1024


def _arguments(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batches", default="16x32,64x128", help="offline batches: PROMPTSxNEW_TOKENS, comma-separated")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests-per-level", type=int, default=1, help="requests per level: this x concurrency, >= 4")
    p.add_argument("--server-new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="vLLM's default compile mode (else --enforce-eager)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, llm_int8 and bf16: checks the mechanics")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: the offline run of one method
    args = p.parse_args(argv)
    if args.smoke:
        args.methods, args.batches, args.prompt_tokens = "llm_int8,bf16", "2x4", 32
        args.concurrency, args.server_new_tokens, args.rounds = "1,2", 4, 1
    return args


def _prompts(n: int, length: int, tokenizer) -> list[list[int]]:
    """``n`` windows of ``length`` tokens of WikiText-2 (random token ids where the data is absent)."""
    data = Path(os.environ.get("LLM_INT8_DATA", HERE.parent.parent / "shared" / "data")) / "wikitext-2" / "test.txt"
    if data.is_file():
        ids = tokenizer(data.read_text()[: 40 * n * length])["input_ids"]
    else:
        import torch

        ids = torch.randint(100, tokenizer.vocab_size, (n * length,), generator=torch.Generator().manual_seed(0))
        ids = ids.tolist()
    if len(ids) < n * length:
        raise ValueError(f"the text gives {len(ids)} tokens, fewer than {n} x {length}")
    return [ids[i * length : (i + 1) * length] for i in range(n)]


def _tree_rss_mib(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


def _engine_args(method: str, compile_mode: bool) -> dict:
    return {**METHODS[method], "max_model_len": MAX_MODEL_LEN, "enforce_eager": not compile_mode, "seed": 0}


def _worker(args) -> None:
    """One method's offline run, in a process of its own: prints one JSON line."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    method = args.worker
    folder = _vllm_models.model_folder("bf16")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    start = time.perf_counter()
    llm = LLM(model=str(folder), enable_prefix_caching=False, **_engine_args(method, args.compile))
    start_s = time.perf_counter() - start
    rows = []
    for batch in args.batches.split(","):
        n, new = map(int, batch.split("x"))
        prompts = [TokensPrompt(prompt_token_ids=p) for p in _prompts(n, args.prompt_tokens, tokenizer)]
        params = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            out = llm.generate(prompts, params, use_tqdm=False)
            times.append(time.perf_counter() - t)
            generated = sum(len(o.outputs[0].token_ids) for o in out)
        best = min(times)
        rows.append({
            "prompts": n, "prompt_tokens": args.prompt_tokens, "new_tokens": new, "seconds": round(best, 3),
            "gen_tok_s": round(generated / best, 1), "all_tok_s": round((generated + n * args.prompt_tokens) / best, 1),
        })  # fmt: skip
        print(f"  {method} {n}x{args.prompt_tokens}+{new}: {best:.2f} s", file=sys.stderr, flush=True)
    rss = _tree_rss_mib(os.getpid())
    llm.llm_engine.engine_core.shutdown()
    print(json.dumps({"method": method, "start_s": round(start_s, 1), "rss_mib": round(rss), "offline": rows}))


def _offline(method: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--batches", args.batches,
           "--prompt-tokens", str(args.prompt_tokens), "--rounds", str(args.rounds)]  # fmt: skip
    cmd += ["--compile"] if args.compile else []
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=_vllm_server.environment(), timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"the offline run of {method} failed ({done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _stream_one(port: int, model: str, prompt: list[int], new_tokens: int) -> tuple[float, float, int]:
    """(time to first token, total time, tokens) of one streaming completion."""
    body = {"model": model, "prompt": prompt, "max_tokens": new_tokens, "temperature": 0.0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"server answered {resp.status}: {resp.read()[:300]!r}")
    first, tokens = None, 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[5:])
        if chunk.get("choices") and first is None:
            first = time.perf_counter() - start
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    conn.close()
    return first or float("nan"), time.perf_counter() - start, tokens


def _server(method: str, args, log_dir: Path) -> dict:
    from transformers import AutoTokenizer

    folder = _vllm_models.model_folder("bf16")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    flags = ["--dtype", METHODS[method]["dtype"], "--no-enable-prefix-caching", "--seed", "0"]
    flags += ["--quantization", METHODS[method]["quantization"]] if "quantization" in METHODS[method] else []
    flags += [] if args.compile else ["--enforce-eager"]
    levels = [int(c) for c in args.concurrency.split(",")]
    count = {c: max(4, c * args.requests_per_level) for c in levels}
    prompts = _prompts(max(count.values()), args.prompt_tokens, tokenizer)
    start = time.perf_counter()
    rows = []
    with _vllm_server.serve(folder, *flags[2:], log=log_dir / f"server_{method}.log") as (port, proc):
        start_s = time.perf_counter() - start
        model = _vllm_server.model_name(port)
        _stream_one(port, model, prompts[0], 2)  # warm
        for c in levels:
            batch = prompts[: count[c]]
            t = time.perf_counter()
            with ThreadPoolExecutor(max_workers=c) as pool:
                results = list(pool.map(lambda p: _stream_one(port, model, p, args.server_new_tokens), batch))
            wall = time.perf_counter() - t
            ttft = sorted(r[0] for r in results)
            p90 = ttft[int(0.9 * (len(ttft) - 1))]
            rows.append({
                "concurrency": c, "requests": len(batch), "gen_tok_s": round(sum(r[2] for r in results) / wall, 1),
                "ttft_median_s": round(statistics.median(ttft), 3), "ttft_p90_s": round(p90, 3),
            })  # fmt: skip
            print(f"  {method} server c={c}: {rows[-1]}", file=sys.stderr, flush=True)
        rss = _tree_rss_mib(proc.pid)
    return {"server_start_s": round(start_s, 1), "server_rss_mib": round(rss), "server": rows}


def _report(results: dict, args, info: dict) -> tuple[list[dict], str]:
    base = "bf16" if "bf16" in results else next(iter(results))
    rows, lines = [], []
    for method, r in results.items():
        for o, b in zip(r["offline"], results[base]["offline"], strict=True):
            config = f"{o['prompts']}x{o['prompt_tokens']}+{o['new_tokens']}"
            rows.append({"method": method, "phase": "offline", "config": config,
                         "gen_tok_s": o["gen_tok_s"], "all_tok_s": o["all_tok_s"], "ttft_median_s": "",
                         "vs_bf16": round(o["seconds"] and b["seconds"] / o["seconds"], 2)})  # fmt: skip
        for s, b in zip(r["server"], results[base]["server"], strict=True):
            rows.append({"method": method, "phase": "server", "config": f"concurrency {s['concurrency']}",
                         "gen_tok_s": s["gen_tok_s"], "all_tok_s": "", "ttft_median_s": s["ttft_median_s"],
                         "vs_bf16": round(s["gen_tok_s"] / b["gen_tok_s"], 2)})  # fmt: skip
    table = markdown_table(
        ["method", "phase", "config", "generated tok/s", "all tok/s", "TTFT median (s)", f"speed vs {base}"],
        [[str(r[k]) for k in ("method", "phase", "config", "gen_tok_s", "all_tok_s", "ttft_median_s", "vs_bf16")]
         for r in rows],
    )  # fmt: skip
    engine = markdown_table(
        ["method", "LLM() start (s)", "server start (s)", "engine RSS offline (MiB)", "server RSS (MiB)"],
        [[m, str(r["start_s"]), str(r["server_start_s"]), str(r["rss_mib"]), str(r["server_rss_mib"])]
         for m, r in results.items()],
    )  # fmt: skip
    mode = "default compile mode" if args.compile else "eager (--enforce-eager)"
    lines = [f"vLLM {info['vllm']} ({mode}), SmolLM2-135M-Instruct, prompts of {args.prompt_tokens} tokens of "
             f"WikiText-2, greedy, ignore_eos, prefix caching off; offline: best of {args.rounds}; server: streaming "
             f"completions of {args.server_new_tokens} tokens, max(4, {args.requests_per_level} x concurrency) "
             "requests per level.", "",
             table, "", engine, "",
             f"CPU: {info['cpu']}; flags: {info['simd']}; {info['logical_cpus']} logical CPUs (vLLM runs one worker "
             f"thread and keeps a core for itself); 1-min load at start {info['loadavg_1min']}; torch {info['torch']}, "
             f"transformers {info['transformers']}; C++ kernels: {info['C++ kernels']}."]  # fmt: skip
    return rows, "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(r["config"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(configs)), 4))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        vals = [next((r["gen_tok_s"] for r in rows if r["method"] == m and r["config"] == c), 0) for c in configs]
        ax.bar([j + i * width for j in range(len(configs))], vals, width, label=m)
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(configs))], configs, rotation=20, fontsize=8)
    ax.set_ylabel("generated tokens / s")
    ax.set_title("vLLM on CPU, SmolLM2-135M: llm_int8 vs bf16 vs fp32")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    args = _arguments(argv)
    if args.worker:
        return _worker(args)
    import vllm

    args.out.mkdir(parents=True, exist_ok=True)
    info = {**run_info(), "vllm": vllm.__version__}
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    _vllm_models.model_folder("bf16")
    results = {}
    for method in methods:
        print(f"{method}: offline", file=sys.stderr, flush=True)
        results[method] = _offline(method, args)
        print(f"{method}: server", file=sys.stderr, flush=True)
        logs = args.out / "logs"  # the servers' own output (gitignored)
        logs.mkdir(exist_ok=True)
        results[method].update(_server(method, args, logs))
    rows, text = _report(results, args, info)
    stem = "vllm_smoke" if args.smoke else "vllm"
    write_csv(args.out / f"{stem}.csv", rows)
    write_text(args.out / f"{stem}.md", text)
    write_text(args.out / f"{stem}.json", json.dumps({"info": info, "results": results}, indent=1))
    _plot(rows, args.out / f"{stem}.png")
    print(text)


if __name__ == "__main__":
    main()
