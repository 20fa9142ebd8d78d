"""What one CPU forward moves around the integer GEMM, counted with the profiler: no dtype round trips.

Speed is not tested here (benchmarks/ measure it); what makes a route slow on any CPU is: a copy of
an (M, K) or (M, N) tensor to another dtype, the weight packed again on every call, or the GEMM's
int32 output converted before the epilogue reads it. Those are counted, whatever CPU runs the suite:
every admitted kernel is forced in turn (``torch._int_mm`` included, which the AVX2 machines only
admit when forced), for fp32, bf16 and fp16 activations, with outlier columns present.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from llm_int8 import Int8Linear
from llm_int8.ops.choice import cpu as cpu_choice
from llm_int8.ops.kernels import probes

M, K, N = 200, 320, 272  # tokens, in, out: past the weight-only crossover, not multiples of 64
MAX_COPY_SHARE = 0.10
"""``aten::copy_`` may move at most this share of the input's bytes per forward. What it does move is
the outlier product's operands, ``X[:, O]`` (M, |O|) and the scaled weight columns (N, |O|) in float32: a
few columns wide (here 3 of 320, about 4% of X's bytes at M = 200 in bf16); anything of the size of X, C
or W is a round trip."""


@pytest.fixture(params=[*probes.ALL_CPU_KERNELS])
def kernel(request, monkeypatch):
    name = request.param
    if name not in probes.exact_cpu_kernels():  # forced, as a user may: admitted for its speed or not
        pytest.skip(f"CPU int8 kernel {name} is not available or not exact on this CPU")
    monkeypatch.setenv(cpu_choice.BACKEND_ENV, name)
    return name


def _bytes(shape: list[int], dtype: str) -> int:
    n = 1
    for d in shape:
        n *= d
    size = {"float": 4, "c10::BFloat16": 2, "c10::Half": 2, "int": 4, "signed char": 1, "long int": 8, "double": 8}
    return n * size.get(dtype, 4)


def _profiled_forward(layer: Int8Linear, X: torch.Tensor):
    with torch.no_grad():
        layer(X)  # first call: packing, the outlier-column cache, the C++ build
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            Y = layer(X)
    return Y, prof.events()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_a_forward_makes_no_round_trip_copies(kernel, dtype):
    layer = Int8Linear.from_linear(torch.nn.Linear(K, N), weight_only_max_tokens=0).to(dtype)
    X = torch.randn(M, K)
    X[:, [3, 100, 201]] *= 15  # three outlier columns
    X = X.to(dtype)
    Y, events = _profiled_forward(layer, X)
    assert Y.dtype == dtype and Y.shape == (M, N)
    copies = [e for e in events if e.name == "aten::copy_"]
    # the destination's bytes (input_dtypes: torch >= 2.5; 4 bytes a value where it is not recorded)
    moved = sum(_bytes(e.input_shapes[0], (getattr(e, "input_dtypes", None) or ["float"])[0]) for e in copies)
    x_bytes = X.numel() * X.element_size()
    big = [e.input_shapes for e in copies if e.input_shapes[0] in ([M, K], [M, N], [N, K])]
    assert not big, f"{kernel}, {dtype}: copies of a whole activation, output or weight: {big}"
    assert moved <= MAX_COPY_SHARE * x_bytes, f"{kernel}, {dtype}: copy_ moved {moved} bytes, X has {x_bytes}"


def test_the_int32_product_goes_straight_into_the_epilogue(monkeypatch):
    """On the ``torch._int_mm`` route the epilogue reads the GEMM's int32 output: no float32 (M, N) copy."""
    monkeypatch.setenv(cpu_choice.BACKEND_ENV, probes.INT_MM)
    from llm_int8.ops.kernels import epilogue, native

    if native.ops() is None:
        pytest.skip(f"C++ kernels not built: {native.reason()}")
    seen = []
    real = epilogue.finish

    def spy(C, *args, **kwargs):
        seen.append(C.dtype)
        return real(C, *args, **kwargs)

    monkeypatch.setattr(epilogue, "finish", spy)
    layer = Int8Linear.from_linear(torch.nn.Linear(K, N), weight_only_max_tokens=0)
    with torch.no_grad():
        layer(torch.randn(M, K))
    assert seen == [torch.int32]


def test_a_bf16_layer_materializes_no_float32_output_sized_tensor(monkeypatch):
    """bf16 in, bf16 out on a CPU with bf16 units (the probe patched to say so, whatever runs the suite):
    the only (M, N) tensor besides the output is the GEMM's int32; the outlier product is formed inside
    the epilogue pass. Every aten op the forward dispatches is seen (TorchDispatchMode)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from llm_int8.ops.kernels import bf16, native

    if native.ops() is None:
        pytest.skip(f"C++ kernels not built: {native.reason()}")
    monkeypatch.setenv(cpu_choice.BACKEND_ENV, probes.INT_MM)
    monkeypatch.setattr(bf16, "has_native_bf16", lambda: True)
    outputs = []

    class Outputs(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    outputs.append((str(func), t.dtype, t.numel()))
            return out

    layer = Int8Linear.from_linear(torch.nn.Linear(K, N), weight_only_max_tokens=0).to(torch.bfloat16)
    X = torch.randn(M, K)
    X[:, [3, 100, 201]] *= 15
    X = X.bfloat16()
    with torch.no_grad():
        layer(X)
        with Outputs():
            Y = layer(X)
    assert Y.dtype == torch.bfloat16
    assert any(d == torch.int32 and n == M * N for _, d, n in outputs)  # the GEMM's output, as it wrote it
    float32 = [(f, n) for f, d, n in outputs if d == torch.float32 and n >= M * N]
    assert not float32, f"float32 tensors of (M, N) size or more: {float32}"
