"""The Triton kernels compile for a Hopper GPU on a machine without one, with the instructions they need.

Runs ``python -m llm_int8.ops.kernels.triton.aot`` in a subprocess with ``TRITON_INTERPRET=0`` (this test
process binds the kernels to the interpreter when there is no GPU; see ``conftest.py``). Triton's wheel
ships ``ptxas`` and ``cuobjdump``, so this needs no GPU and no CUDA toolkit. The full report over every
autotuning tile and sm_80 is ``python -m llm_int8.ops.kernels.triton.aot`` (BENCHMARKS.md section (f)).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> list[dict]:
    path = tmp_path_factory.mktemp("aot") / "rows.json"
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    cmd = [sys.executable, "-m", "llm_int8.ops.kernels.triton.aot", "--arch", "90", "--quick", "--json", str(path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert path.is_file(), done.stdout + done.stderr
    return json.loads(path.read_text())


def test_every_kernel_compiles_and_fits(report):
    kernels = {row["kernel"].split()[0] for row in report}
    assert kernels == {"column_outliers", "row_quantize", "int8_gemm", "decode"}
    for row in report:
        assert "error" not in row, row
        assert row["fits_shared"], row


def test_quantization_rounds_as_the_cpu_quantizer(report):
    # launched with enable_fp_fusion=False: x * nd + zp rounds twice (no fma); divisions correctly rounded
    for row in (r for r in report if r["kernel"].startswith("row_quantize")):
        assert row["fma_f32"] == 0 and row["div_approx_f32"] == 0 and row["div_rn_f32"] >= 1, row


def test_gemm_uses_pipelined_int8_wgmma(report):
    (row,) = [r for r in report if r["kernel"].startswith("int8_gemm")]
    assert row["int8_mma"] == "wgmma", row
    bm, bn, bk = (int(v) for v in row["kernel"].split()[1].split("x"))
    assert row["shared_bytes"] >= 2 * (bm * bk + bk * bn), row  # more than one stage of A and B tiles
