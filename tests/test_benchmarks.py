"""Every benchmark script still runs: ``--help``, and ``--smoke`` to the end, writing its results.

Each ``benchmarks/bench_*.py`` (found by glob: a new script is checked as soon as it exists) answers
``--help`` (in this process) offering ``--smoke``, and runs as
``python benchmarks/X.py --smoke --out <tmp>`` in a subprocess, with this checkout's ``src`` first
on ``PYTHONPATH`` and the suite's ``LLM_INT8_*`` settings (timing off, a cache folder of this
session). ``--smoke`` (``benchmarks/_common.smoke_arguments``) is the script's own code on its
smallest shape, one round: its numbers mean nothing, but a rename in the library that breaks a
script fails here instead of on the next person who runs it.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("bench_*.py"))
WRITES = {  # (script, mode options): the files its smoke run writes into --out
    ("bench_e2e.py", ()): ("e2e.csv", "e2e.md", "e2e.png"),
    ("bench_e2e_ab.py", ()): ("e2e_ab.csv", "e2e_ab.md"),
    ("bench_emulation.py", ()): ("emulation.csv", "emulation.md"),
    ("bench_gemm_routes.py", ()): ("gemm_routes.csv", "gemm_routes.md"),
    ("bench_kernel_choice.py", ()): ("kernel_choice.json", "kernel_choice.md"),
    ("bench_layers.py", ()): ("layers.csv", "layers.md", "layers.png"),
    ("bench_layers.py", ("--breakdown",)): ("breakdown.csv", "breakdown.md", "breakdown.png"),
    ("bench_loading.py", ()): ("loading.csv", "loading.md"),
    ("bench_memory.py", ()): ("memory.csv", "memory.md"),
    ("bench_quantizer.py", ()): ("quantizer.csv", "quantizer.md"),
    ("bench_batch_invariant.py", ()): ("batch_invariant.csv", "batch_invariant.md", "batch_invariant.png"),
    ("bench_vllm.py", ()): ("vllm_smoke.csv", "vllm_smoke.md", "vllm_smoke.png"),
}
NEEDS = {"bench_vllm.py": "vllm"}  # an optional dependency: where it is absent the smoke run is a skip that says so
LOADS_SMOLLM2 = {"bench_e2e.py", "bench_e2e_ab.py"}  # and read WikiText-2 (--text)
SLOW = {*LOADS_SMOLLM2, "bench_quantizer.py"}  # the last: Inductor compiles in two fresh processes, tens of seconds
TIMEOUT_S = 600  # a smoke run takes seconds of CPU; a loaded 2-core machine stretches the wall time


def _env() -> dict[str, str]:
    """The suite's environment (its LLM_INT8_* included) with this checkout's src first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env["TQDM_DISABLE"] = "1"
    return env


def _run(script: str, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(BENCHMARKS / script), *options]
    try:
        return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(command[1:])} ran past {TIMEOUT_S} s")


def _params(pairs):
    """pytest params of (script, options), those in SLOW marked slow."""
    return [
        pytest.param(script, options, id=" ".join((script, *options)), marks=[pytest.mark.slow] * (script in SLOW))
        for script, options in pairs
    ]


def _results_state() -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in (BENCHMARKS / "results").rglob("*") if path.is_file()}


def test_the_glob_finds_the_scripts():
    assert {"bench_layers.py", "bench_e2e.py"} <= set(SCRIPTS), f"no benchmark scripts found in {BENCHMARKS}"


@pytest.mark.parametrize("script", [*SCRIPTS, "gpu_check.py"])
def test_help_works_and_offers_smoke(script, monkeypatch, capsys):
    """``python X.py --help``, run in this process (its imports are loaded already: not seconds per script)."""
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), "--help"])
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])  # as python puts the script's folder first
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    out = capsys.readouterr().out
    assert exited.value.code in (0, None), f"{script} --help exited with {exited.value.code}"
    assert "usage:" in out
    if script.startswith("bench_"):
        assert "--smoke" in out, (
            f"{script} needs a --smoke mode (its own code on the smallest shape, one round; "
            "benchmarks/_common.smoke_arguments) so that the suite runs it"
        )


@pytest.mark.parametrize(
    ("script", "options"), _params([(s, ()) for s in SCRIPTS] + [("bench_layers.py", ("--breakdown",))])
)
def test_smoke_run_writes_its_results(script, options, tmp_path, request):
    if script in NEEDS:
        pytest.importorskip(NEEDS[script], reason=f"{script} needs {NEEDS[script]} (scripts/install.sh --vllm)")
    out = tmp_path / "out"
    text = ["--text", str(request.getfixturevalue("wikitext_path"))] if script in LOADS_SMOLLM2 else []
    before = _results_state()
    done = _run(script, *options, "--smoke", "--out", str(out), *text)
    assert "unrecognized arguments: --smoke" not in done.stderr, f"{script} needs a --smoke mode (see --help test)"
    assert done.returncode == 0, f"{script} {' '.join(options)} --smoke failed:\n{done.stderr[-4000:]}"
    expected = WRITES.get((script, options))
    assert expected is not None, f"list the files that `{script} --smoke` writes in WRITES of {Path(__file__).name}"
    written = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
    missing = [name for name in expected if name not in written]
    assert not missing, f"{script} --smoke did not write {missing} into --out (wrote {written})"
    assert all((out / name).stat().st_size > 0 for name in expected)
    assert not [name for name in written if ".tmp" in name], f"{script} left half-written files: {written}"
    assert _results_state() == before, f"{script} --smoke --out {out} changed files in benchmarks/results"
