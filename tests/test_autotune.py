"""Kernel choice by measurement (``ops/choice/cpu.py``, ``ops/choice/admission.py``): forced, fixed,
timed, cached on disk; a slow kernel not admitted.

Timing is replaced by fake clocks where the test is about the choice; the real race runs once on a
tiny shape, where only its result's validity (an admitted kernel, an exact product) is checked.
"""

from __future__ import annotations

import json

import _cpu
import pytest
import torch

from llm_int8.ops import int8_mm
from llm_int8.ops.choice import admission, probe
from llm_int8.ops.choice import cpu as cpu_choice
from llm_int8.ops.forward import weight_only_limit
from llm_int8.ops.kernels import cpu_gemm, probes
from llm_int8.primitives import int8_matmul_reference


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    """Timing on, decisions in a fresh cache directory, no decision of another test in memory."""
    monkeypatch.setenv(cpu_choice.AUTOTUNE_ENV, "1")
    monkeypatch.delenv(cpu_choice.BACKEND_ENV, raising=False)
    monkeypatch.delenv("LLM_INT8_CACHE_DIR", raising=False)  # conftest's session folder: XDG_CACHE_HOME is tested here
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cpu_choice.forget()
    yield tmp_path
    cpu_choice.forget()


def _codes(*shape):
    return torch.randint(-127, 128, shape, dtype=torch.int8)


@pytest.mark.parametrize("M,bucket", [(1, 1), (2, 2), (3, 4), (16, 16), (17, 32), (128, 128), (129, 128), (4096, 128)])
def test_token_bucket(M, bucket):
    assert cpu_choice.token_bucket(M) == bucket


def test_timing_off_takes_the_fixed_order(monkeypatch):
    monkeypatch.setenv(cpu_choice.AUTOTUNE_ENV, "0")
    monkeypatch.setattr(admission, "fixed_kernel", lambda: probes.ONEDNN)
    assert not cpu_choice.timing_enabled()
    assert cpu_choice.gemm_kernel(64, 32, 5) == probes.ONEDNN
    assert weight_only_limit(48, 24) == cpu_choice.fixed_max_tokens(48, 24)


def test_forced_backend(monkeypatch):
    monkeypatch.setenv(cpu_choice.BACKEND_ENV, "reference")
    assert cpu_choice.gemm_kernel(64, 32, 5) == probes.REFERENCE
    A, B = _codes(5, 32), _codes(64, 32)
    assert torch.equal(int8_mm(A, B), int8_matmul_reference(A, B))
    monkeypatch.setenv(cpu_choice.BACKEND_ENV, "no_such_kernel")
    with pytest.raises(ValueError, match="not a CPU int8 kernel"):
        cpu_choice.gemm_kernel(64, 32, 5)


def test_forcing_a_kernel_that_failed_its_self_test_is_refused(monkeypatch):
    monkeypatch.setattr(probes, "exact_cpu_kernels", lambda: [probes.FBGEMM])
    monkeypatch.setenv(cpu_choice.BACKEND_ENV, probes.ONEDNN_S8)
    with pytest.raises(ValueError, match="failed its exactness self-test"):
        cpu_choice.gemm_kernel(64, 32, 5)


def test_race_picks_the_fastest_and_drops_a_slow_one_early(monkeypatch):
    calls = {"fast": [], "slow": [], "mid": []}
    cost = {"fast": 1.0, "slow": 50.0, "mid": 2.0}  # seconds per row, by the fake clock

    def candidate(name):
        def run(m):
            calls[name].append(m)
            return cost[name] * m

        return run

    monkeypatch.setattr(probe, "seconds", lambda fn: fn())
    monkeypatch.setattr(cpu_choice, "_CALL_BUDGET_S", float("inf"))
    rows, times = cpu_choice._race({name: candidate(name) for name in ("mid", "fast", "slow")}, 64)
    assert rows == 64
    assert times["fast"] == 64.0 and times["mid"] == 128.0 and times["slow"] is None
    assert max(calls["slow"]) < 64  # stopped once a call was slower than the best full-size one


def test_race_times_fewer_rows_when_a_call_would_be_long(monkeypatch):
    monkeypatch.setattr(probe, "seconds", lambda fn: fn())
    monkeypatch.setattr(cpu_choice, "_CALL_BUDGET_S", 10.0)
    rows, times = cpu_choice._race({"a": lambda m: 1.0 * m, "b": lambda m: 3.0 * m}, 128)
    assert rows == 16 and times == {"a": 16.0, "b": None}


def test_decision_is_measured_once_and_cached_on_disk(tuning, monkeypatch):
    monkeypatch.setattr(admission, "admitted_kernels", lambda: [probes.FBGEMM, probes.ONEDNN])
    measured = []

    def fake_race(run, M):
        measured.append(M)
        return M, {probes.FBGEMM: 2.0, probes.ONEDNN: 1.0}

    monkeypatch.setattr(cpu_choice, "_race", fake_race)
    monkeypatch.setattr(probe, "probe_layout", lambda N, K, kernel: None)
    assert cpu_choice.gemm_kernel(40, 24, 3) == probes.ONEDNN
    assert cpu_choice.gemm_kernel(40, 24, 4) == probes.ONEDNN  # same bucket: not timed again
    assert measured == [4]
    path = cpu_choice.cache_path()
    assert path.parent == tuning / "llm-int8" and path.is_file()
    saved = json.loads(path.read_text())
    assert saved["machine"] == probe.machine_key()
    assert saved["decisions"]["gemm:24x40:m4"]["choice"] == probes.ONEDNN
    # a new process: nothing in memory, the file answers without timing
    cpu_choice.forget()
    assert cpu_choice.gemm_kernel(40, 24, 4) == probes.ONEDNN and measured == [4]
    assert not list(path.parent.glob("*.tmp"))  # written through a temporary file, replaced atomically


def test_cache_key_changes_with_the_thread_count(tuning):
    threads = torch.get_num_threads()
    first = cpu_choice.cache_path()
    try:
        torch.set_num_threads(threads + 1)
        assert cpu_choice.cache_path() != first
    finally:
        torch.set_num_threads(threads)


def test_unreadable_cache_file_is_ignored(tuning, monkeypatch):
    path = cpu_choice.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    monkeypatch.setattr(admission, "admitted_kernels", lambda: [probes.FBGEMM, probes.ONEDNN])
    monkeypatch.setattr(cpu_choice, "_race", lambda run, M: (M, {probes.FBGEMM: 1.0, probes.ONEDNN: 2.0}))
    monkeypatch.setattr(probe, "probe_layout", lambda N, K, kernel: None)
    assert cpu_choice.gemm_kernel(8, 16, 1) == probes.FBGEMM
    assert json.loads(path.read_text())["decisions"]["gemm:16x8:m1"]["choice"] == probes.FBGEMM


def test_real_race_on_a_small_shape_is_exact(tuning):
    kernels = admission.admitted_kernels()
    if len(kernels) < 2:
        pytest.skip(f"only {kernels} admitted on this CPU: nothing to choose between")
    choice = cpu_choice.gemm_kernel(40, 64, 9)
    assert choice in kernels
    decision = cpu_choice.decisions()["gemm:64x40:m16"]
    assert decision["choice"] == choice and set(decision["ms"]) == set(kernels)
    A, B = _codes(9, 64), _codes(40, 64)
    assert torch.equal(int8_mm(A, B), int8_matmul_reference(A, B))


@pytest.mark.skipif(not probes.has_weight_int8pack_mm(), reason="no weight-only kernel in this torch build")
def test_weight_only_crossover_is_measured(tuning):
    limit = weight_only_limit(64, 48)
    assert limit in (0, 1, 2, 4, 8, 16)
    decision = cpu_choice.decisions()["weight_only:64x48"]
    assert decision["max_tokens"] == limit
    # every bucket up to the limit was won by the weight-only kernel
    for m, times in decision["ms"].items():
        assert (times["weight_only"] < times["int8"]) == (int(m) <= limit)


def test_weight_only_crossover_without_the_kernel_is_the_fixed_rule(tuning, monkeypatch):
    monkeypatch.setattr(probes, "has_weight_int8pack_mm", lambda: False)
    assert weight_only_limit(64, 48) == cpu_choice.fixed_max_tokens(64, 48)
    assert not cpu_choice.decisions()


# --- the no-split oneDNN kernel: forced on any CPU through an exact stand-in -------------------------


def test_onednn_s8_branch(monkeypatch):
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_prepack")):
        pytest.skip("no oneDNN in this torch build")

    # the real kernel saturates without VNNI (its self-test says so); this stand-in is what it returns with VNNI
    def exact(A_codes, weight):
        return (A_codes.double() @ exact.W.double().T).float()

    monkeypatch.setattr(cpu_gemm, "_gemm_onednn_s8", exact)
    monkeypatch.setattr(admission, "fixed_kernel", lambda: probes.ONEDNN_S8)
    W = torch.full((3, 1100), 127, dtype=torch.int8)  # 127 * 127 * 1100 > 2^24: outputs beyond float32's integers
    W[1] = _codes(1100)
    exact.W = W
    A = torch.full((5, 1100), 127, dtype=torch.int8)
    A[2] = -128  # the no-split kernel takes -128 too
    packed = cpu_gemm.prepack(W, probes.ONEDNN_S8)
    assert not packed.always_exact
    assert torch.equal(int8_mm(A, W, packed=packed), int8_matmul_reference(A, W))
    # a layout packed for another kernel hands out the s8 one, sharing oneDNN's packed weight
    other = cpu_gemm.prepack(W, probes.ONEDNN)
    s8 = other.for_kernel(probes.ONEDNN_S8, W)
    assert s8.kernel == probes.ONEDNN_S8 and s8.packed is other.packed
    assert other.for_kernel(probes.ONEDNN_S8, W) is s8


def test_onednn_s8_admission_follows_its_self_test():
    """Without an int8 dot product (AVX2) oneDNN's s8 x s8 kernel saturates: never exact, never admitted.
    With VNNI / AMX it is exact (admitted or not is then a matter of its speed, as on AMD Zen 4, where
    it runs as a reference loop); this CPU's class decides which of the two is checked."""
    dot = _cpu.int8_dot_products()
    if dot is None:
        pytest.skip("the CPU's flags are unknown: cannot tell which behaviour is right")
    if dot:  # VNNI / AMX
        assert probes.ONEDNN_S8 in probes.exact_cpu_kernels() or not torch.backends.mkldnn.is_available()
    else:  # AVX2: saturates
        assert probes.ONEDNN_S8 not in probes.exact_cpu_kernels()
        assert probes.ONEDNN_S8 not in admission.admitted_kernels()
