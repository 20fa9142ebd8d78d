"""Kernel choice by measurement (``ops/autotune.py``): forced, fixed, timed, cached on disk.

Timing is replaced by fake clocks where the test is about the choice; the real race runs once on a
tiny shape, where only its result's validity (an admitted kernel, an exact product) is checked.
"""

from __future__ import annotations

import json

import pytest
import torch

from llm_int8.ops import _capability, autotune, cpu, int8_mm, weight_only
from llm_int8.primitives import int8_matmul_reference


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    """Timing on, decisions in a fresh cache directory, no decision of another test in memory."""
    monkeypatch.setenv(autotune.AUTOTUNE_ENV, "1")
    monkeypatch.delenv(autotune.BACKEND_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(autotune, "_loaded_from", None)
    autotune._memory.clear()
    autotune._memo.clear()
    yield tmp_path
    autotune._memory.clear()
    autotune._memo.clear()


def _codes(*shape):
    return torch.randint(-127, 128, shape, dtype=torch.int8)


@pytest.mark.parametrize("M,bucket", [(1, 1), (2, 2), (3, 4), (16, 16), (17, 32), (128, 128), (129, 128), (4096, 128)])
def test_token_bucket(M, bucket):
    assert autotune.token_bucket(M) == bucket


def test_timing_off_takes_the_fixed_order(monkeypatch):
    monkeypatch.setenv(autotune.AUTOTUNE_ENV, "0")
    monkeypatch.setattr(_capability, "cpu_int8_backend", lambda: _capability.ONEDNN)
    assert not autotune.enabled()
    assert autotune.cpu_gemm(64, 32, 5) == _capability.ONEDNN
    assert autotune.weight_only_max_tokens(48, 24) == weight_only.fixed_max_tokens(48, 24)


def test_forced_backend(monkeypatch):
    monkeypatch.setenv(autotune.BACKEND_ENV, "reference")
    assert autotune.cpu_gemm(64, 32, 5) == _capability.REFERENCE
    A, B = _codes(5, 32), _codes(64, 32)
    assert torch.equal(int8_mm(A, B), int8_matmul_reference(A, B))
    monkeypatch.setenv(autotune.BACKEND_ENV, "no_such_kernel")
    with pytest.raises(ValueError, match="not a CPU int8 kernel"):
        autotune.cpu_gemm(64, 32, 5)


def test_forcing_a_kernel_that_failed_its_self_test_is_refused(monkeypatch):
    monkeypatch.setattr(_capability, "admitted_cpu_kernels", lambda: [_capability.FBGEMM])
    monkeypatch.setenv(autotune.BACKEND_ENV, _capability.ONEDNN_S8)
    with pytest.raises(ValueError, match="failed its exactness self-test"):
        autotune.cpu_gemm(64, 32, 5)


def test_race_picks_the_fastest_and_drops_a_slow_one_early(monkeypatch):
    calls = {"fast": [], "slow": [], "mid": []}
    cost = {"fast": 1.0, "slow": 50.0, "mid": 2.0}  # seconds per row, by the fake clock

    def candidate(name):
        def run(m):
            calls[name].append(m)
            return cost[name] * m

        return run

    monkeypatch.setattr(autotune, "_seconds", lambda fn: fn())
    monkeypatch.setattr(autotune, "_CALL_BUDGET_S", float("inf"))
    rows, times = autotune._race({name: candidate(name) for name in ("mid", "fast", "slow")}, 64)
    assert rows == 64
    assert times["fast"] == 64.0 and times["mid"] == 128.0 and times["slow"] is None
    assert max(calls["slow"]) < 64  # stopped once a call was slower than the best full-size one


def test_race_times_fewer_rows_when_a_call_would_be_long(monkeypatch):
    monkeypatch.setattr(autotune, "_seconds", lambda fn: fn())
    monkeypatch.setattr(autotune, "_CALL_BUDGET_S", 10.0)
    rows, times = autotune._race({"a": lambda m: 1.0 * m, "b": lambda m: 3.0 * m}, 128)
    assert rows == 16 and times == {"a": 16.0, "b": None}


def test_decision_is_measured_once_and_cached_on_disk(tuning, monkeypatch):
    monkeypatch.setattr(_capability, "admitted_cpu_kernels", lambda: [_capability.FBGEMM, _capability.ONEDNN])
    measured = []

    def fake_race(run, M):
        measured.append(M)
        return M, {_capability.FBGEMM: 2.0, _capability.ONEDNN: 1.0}

    monkeypatch.setattr(autotune, "_race", fake_race)
    monkeypatch.setattr(autotune, "_probe_layout", lambda N, K, kernel: None)
    assert autotune.cpu_gemm(40, 24, 3) == _capability.ONEDNN
    assert autotune.cpu_gemm(40, 24, 4) == _capability.ONEDNN  # same bucket: not timed again
    assert measured == [4]
    path = autotune.cache_path()
    assert path.parent == tuning / "llm-int8" and path.is_file()
    saved = json.loads(path.read_text())
    assert saved["machine"] == autotune.machine_key()
    assert saved["decisions"]["gemm:24x40:m4"]["choice"] == _capability.ONEDNN
    # a new process: nothing in memory, the file answers without timing
    autotune._memory.clear()
    autotune._memo.clear()
    monkeypatch.setattr(autotune, "_loaded_from", None)
    assert autotune.cpu_gemm(40, 24, 4) == _capability.ONEDNN and measured == [4]
    assert not list(path.parent.glob("*.tmp"))  # written through a temporary file, replaced atomically


def test_cache_key_changes_with_the_thread_count(tuning):
    threads = torch.get_num_threads()
    first = autotune.cache_path()
    try:
        torch.set_num_threads(threads + 1)
        assert autotune.cache_path() != first
    finally:
        torch.set_num_threads(threads)


def test_unreadable_cache_file_is_ignored(tuning, monkeypatch):
    path = autotune.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    monkeypatch.setattr(_capability, "admitted_cpu_kernels", lambda: [_capability.FBGEMM, _capability.ONEDNN])
    monkeypatch.setattr(autotune, "_race", lambda run, M: (M, {_capability.FBGEMM: 1.0, _capability.ONEDNN: 2.0}))
    monkeypatch.setattr(autotune, "_probe_layout", lambda N, K, kernel: None)
    assert autotune.cpu_gemm(8, 16, 1) == _capability.FBGEMM
    assert json.loads(path.read_text())["decisions"]["gemm:16x8:m1"]["choice"] == _capability.FBGEMM


def test_real_race_on_a_small_shape_is_exact(tuning):
    kernels = _capability.admitted_cpu_kernels()
    if len(kernels) < 2:
        pytest.skip(f"only {kernels} admitted on this CPU: nothing to choose between")
    choice = autotune.cpu_gemm(40, 64, 9)
    assert choice in kernels
    decision = autotune.decisions()["gemm:64x40:m16"]
    assert decision["choice"] == choice and set(decision["ms"]) == set(kernels)
    A, B = _codes(9, 64), _codes(40, 64)
    assert torch.equal(int8_mm(A, B), int8_matmul_reference(A, B))


@pytest.mark.skipif(not _capability.has_weight_int8pack_mm(), reason="no weight-only kernel in this torch build")
def test_weight_only_crossover_is_measured(tuning):
    limit = weight_only.auto_max_tokens(64, 48)
    assert limit in (0, 1, 2, 4, 8, 16)
    decision = autotune.decisions()["weight_only:64x48"]
    assert decision["max_tokens"] == limit
    # every bucket up to the limit was won by the weight-only kernel
    for m, times in decision["ms"].items():
        assert (times["weight_only"] < times["int8"]) == (int(m) <= limit)


def test_weight_only_crossover_without_the_kernel_is_the_fixed_rule(tuning, monkeypatch):
    monkeypatch.setattr(_capability, "has_weight_int8pack_mm", lambda: False)
    assert autotune.weight_only_max_tokens(64, 48) == weight_only.fixed_max_tokens(64, 48)
    assert not autotune.decisions()


# --- the no-split oneDNN kernel: forced on any CPU through an exact stand-in -------------------------


def test_onednn_s8_branch(monkeypatch):
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_prepack")):
        pytest.skip("no oneDNN in this torch build")

    # the real kernel saturates without VNNI (its self-test says so); this stand-in is what it returns with VNNI
    def exact(A_codes, weight):
        return (A_codes.double() @ exact.W.double().T).float()

    monkeypatch.setattr(cpu, "_gemm_onednn_s8", exact)
    monkeypatch.setattr(_capability, "cpu_int8_backend", lambda: _capability.ONEDNN_S8)
    W = torch.full((3, 1100), 127, dtype=torch.int8)  # 127 * 127 * 1100 > 2^24: outputs beyond float32's integers
    W[1] = _codes(1100)
    exact.W = W
    A = torch.full((5, 1100), 127, dtype=torch.int8)
    A[2] = -128  # the no-split kernel takes -128 too
    packed = cpu.prepack(W, _capability.ONEDNN_S8)
    assert not packed.always_exact
    assert torch.equal(int8_mm(A, W, packed=packed), int8_matmul_reference(A, W))
    # a layout packed for another kernel hands out the s8 one, sharing oneDNN's packed weight
    other = cpu.prepack(W, _capability.ONEDNN)
    s8 = other.for_kernel(_capability.ONEDNN_S8, W)
    assert s8.kernel == _capability.ONEDNN_S8 and s8.packed is other.packed
    assert other.for_kernel(_capability.ONEDNN_S8, W) is s8


def test_onednn_s8_admission_follows_its_self_test():
    flags = autotune._cpu_description()[1].split()
    if not flags or {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags):
        pytest.skip("a VNNI/AMX CPU (or unknown flags): the kernel may be admitted")
    assert _capability.ONEDNN_S8 not in _capability.admitted_cpu_kernels()
