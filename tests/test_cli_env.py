"""``llm-int8 env``: the bug-report dump, with and without measuring."""

from __future__ import annotations

import pytest

from llm_int8.cli import main
from llm_int8.ops.choice import admission
from llm_int8.ops.choice import cpu as cpu_choice
from llm_int8.ops.kernels import native


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    native.ops()  # built or loaded from the user's cache before XDG_CACHE_HOME moves (never rebuilt per test)
    monkeypatch.delenv("LLM_INT8_CACHE_DIR", raising=False)  # conftest's session folder: XDG_CACHE_HOME is tested here
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cpu_choice.forget()
    yield tmp_path
    cpu_choice.forget()


def test_env_prints_cpu_kernels_versions_and_cache(capsys, fresh_cache):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for section in ("## CPU", "## Versions", "## Kernels", "## Choice by measurement"):
        assert section in out
    for name in ("torch:", "transformers:", "bitsandbytes:", "triton:", "llm_int8:"):
        assert f"\n{name}" in out
    admitted = ", ".join(admission.admitted_kernels()) or "none"
    assert f"of the fastest): {admitted}\n" in out
    assert f"used with timing off: {admission.fixed_kernel()}\n" in out
    assert f"cache file: {fresh_cache}" in out
    assert "timing: off" in out and "no per-shape decisions yet" in out  # the test suite turns timing off
    native_state = "loaded" if native.ops() is not None else f"not used ({native.reason()})"
    assert f"C++ CPU kernels (one-pass quantizer and epilogue): {native_state}" in out


def test_env_tune_measures_and_lists_the_choice(capsys, fresh_cache, monkeypatch):
    monkeypatch.setenv(cpu_choice.AUTOTUNE_ENV, "1")
    if len(admission.admitted_kernels()) < 2:
        pytest.skip("one admitted kernel: nothing is timed")
    assert main(["env", "--tune", "64x48", "--tokens", "3"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("gemm:64x48:m4:"))
    assert line.split()[1] in admission.admitted_kernels() and " ms" in line
    assert cpu_choice.cache_path().is_file()


@pytest.mark.parametrize("shape", ["64", "0x4", "axb"])
def test_env_rejects_a_bad_shape(shape):
    with pytest.raises(SystemExit):
        main(["env", "--tune", shape])
