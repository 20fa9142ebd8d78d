"""Admission (``ops/choice/admission.py``): an exact kernel far slower than the best is not used.

The timing is replaced by a fake clock that reports a time per kernel, so a slow kernel can be
staged on any CPU: the admission probe drops it, the order used with timing off never picks it,
and ``llm-int8 env`` says why.
"""

from __future__ import annotations

import json

import pytest

from llm_int8.cli import main
from llm_int8.ops.choice import admission, probe
from llm_int8.ops.choice import cpu as cpu_choice
from llm_int8.ops.kernels import probes

EXACT = [probes.ONEDNN_S8, probes.FBGEMM_PAIRS, probes.FBGEMM, probes.INT_MM]  # ONEDNN "fails its self-test"


@pytest.fixture
def staged(monkeypatch, tmp_path):
    """Exact kernels as in ``EXACT``, timed by a fake clock (ms per probe call, set by the test)."""
    monkeypatch.setenv("LLM_INT8_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(probes, "exact_cpu_kernels", lambda: list(EXACT))
    ms: dict[str, float] = {}
    timed: list[str] = []

    def run_probe(kernel, A, W, packed):
        return lambda m: kernel  # a call "runs" the kernel: the clock below looks its time up

    def seconds(fn):
        kernel = fn()
        timed.append(kernel)
        return ms[kernel] / 1e3

    monkeypatch.setattr(probe, "run_probe", run_probe)
    monkeypatch.setattr(probe, "probe_layout", lambda N, K, kernel: None)
    monkeypatch.setattr(probe, "seconds", seconds)
    monkeypatch.setattr(probe, "best_of", lambda fn, repeats: min(seconds(fn) for _ in range(repeats)))
    cpu_choice.forget()
    yield ms, timed
    cpu_choice.forget()


def test_a_reference_loop_is_not_admitted_and_never_the_fixed_choice(staged, monkeypatch):
    ms, timed = staged
    # onednn_s8 as on AMD Zen 4: exact, first in the order of preference, 1000x slower than the rest
    ms.update({probes.ONEDNN_S8: 700.0, probes.FBGEMM_PAIRS: 0.7, probes.FBGEMM: 0.9, probes.INT_MM: 6.5})
    state = admission.admission()
    assert state["admitted"] == [probes.FBGEMM_PAIRS, probes.FBGEMM, probes.INT_MM]  # fastest first
    assert state["dropped"][probes.ONEDNN_S8].startswith("1000x slower than fbgemm_pairs")
    assert "self-test" in state["dropped"][probes.ONEDNN]
    assert admission.fixed_kernel() == probes.FBGEMM_PAIRS
    monkeypatch.setenv(cpu_choice.AUTOTUNE_ENV, "0")
    assert cpu_choice.gemm_kernel(4096, 4096, 128) == probes.FBGEMM_PAIRS
    # a first timing far past the floor is not repeated: the loop costs one probe call
    assert timed.count(probes.ONEDNN_S8) == 1 and timed.count(probes.FBGEMM) == 1 + 3  # once, then best of 3


def test_one_slow_timing_of_a_good_kernel_is_timed_again(staged):
    ms, timed = staged
    ms.update({probes.ONEDNN_S8: 1.0, probes.FBGEMM_PAIRS: 0.8, probes.FBGEMM: 0.9, probes.INT_MM: 12.0})
    assert admission.admitted_kernels() == [probes.FBGEMM_PAIRS, probes.FBGEMM, probes.ONEDNN_S8]
    assert "15x slower" in admission.admission()["dropped"][probes.INT_MM]


def test_admission_is_kept_on_disk(staged, tmp_path):
    ms, timed = staged
    ms.update({probes.ONEDNN_S8: 1.0, probes.FBGEMM_PAIRS: 1.0, probes.FBGEMM: 1.0, probes.INT_MM: 100.0})
    first = admission.admitted_kernels()
    saved = json.loads(cpu_choice.cache_path().read_text())["decisions"]["admission"]
    assert saved["admitted"] == first and saved["probe"] == list(admission.ADMISSION_PROBE)
    cpu_choice.forget()  # a new process
    timed.clear()
    assert admission.admitted_kernels() == first and not timed


def test_env_lists_the_dropped_kernels_and_why(staged, capsys):
    ms, _ = staged
    ms.update({probes.ONEDNN_S8: 500.0, probes.FBGEMM_PAIRS: 1.0, probes.FBGEMM: 1.1, probes.INT_MM: 2.0})
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "not admitted: onednn_s8: 500x slower than fbgemm_pairs" in out
    assert "not admitted: onednn: not available or not exact on this CPU" in out
    assert "used with timing off: fbgemm_pairs" in out


def test_env_check_prints_a_line_per_kernel(staged, capsys):
    ms, _ = staged
    ms.update({probes.ONEDNN_S8: 500.0, probes.FBGEMM_PAIRS: 1.0, probes.FBGEMM: 1.1, probes.INT_MM: 2.0})
    assert main(["env", "--check"]) == 0
    out = capsys.readouterr().out.split("## Check")[1]
    lines = {
        line.split()[0]: line for line in out.splitlines()[1:] if line and line.split()[0] in EXACT + [probes.ONEDNN]
    }
    assert set(lines) == set(probes.ALL_CPU_KERNELS)
    assert "dropped: 500x slower" in lines[probes.ONEDNN_S8] and "the speed of fp32" in lines[probes.ONEDNN_S8]
    assert lines[probes.FBGEMM].rstrip().endswith("admitted")
    assert "not exact or unavailable" in lines[probes.ONEDNN]


def test_env_check_fails_without_an_exact_kernel(staged, monkeypatch, capsys):
    monkeypatch.setattr(probes, "exact_cpu_kernels", lambda: [])
    assert main(["env", "--check"]) == 1
    assert "no exact int8 GEMM is usable" in capsys.readouterr().out


def test_the_real_admission_runs_and_admits_an_exact_kernel(monkeypatch, tmp_path):
    monkeypatch.setenv("LLM_INT8_CACHE_DIR", str(tmp_path))
    cpu_choice.forget()
    try:
        state = admission.measure()
    finally:
        cpu_choice.forget()
    exact = probes.exact_cpu_kernels()
    assert set(state["admitted"]) <= set(exact) and (state["admitted"] or not exact)
    fastest = min(state["ms"][k] for k in exact) if exact else None
    for kernel in state["admitted"]:
        assert state["ms"][kernel] <= admission.SLOW_FACTOR * fastest
