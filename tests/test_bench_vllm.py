"""``benchmarks/bench_vllm.py --smoke`` runs end to end: both phases, every output file (skipped without vLLM)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_the_tables_and_the_plot(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_vllm.py"), "--smoke", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "vllm_smoke.csv")))
    assert {r["method"] for r in rows} == {"llm_int8", "bf16"}
    assert {r["phase"] for r in rows} == {"offline", "server"}
    assert all(float(r["gen_tok_s"]) > 0 for r in rows)
    assert (tmp_path / "vllm_smoke.png").stat().st_size > 1000
    text = (tmp_path / "vllm_smoke.md").read_text()
    assert "avx" in text.lower() or "none of avx2" in text  # the CPU flags are recorded
