"""The Table 1 methods: exact integer emulation against float64 references of the paper's formulas."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llm_int8 import Int8Linear
from llm_int8.evaluation import METHODS, EmulatedInt8Linear, MethodSpec, apply_method, parse_methods
from llm_int8.primitives import (
    emulated_int8_matmul,
    exact_quantized_product,
    int8_linear_reference,
    integer_matmul,
    quantize_operand,
)

EMULATED = [name for name, spec in METHODS.items() if not spec.library and not spec.is_float and not spec.is_reference]


# --- float64 references, written from the paper's Section 2 equations -------------------------


def _absmax_ref(A: torch.Tensor, per_row: bool):
    """``s = 127 / max|A|``, ``A_i8 = round(s A)``; returns (codes, step = 1/s) in float64."""
    m = A.abs().amax(dim=-1, keepdim=True) if per_row else A.abs().amax()
    s = 127 / m
    return torch.round(s * A).clamp(-127, 127), 1 / s


def _zeropoint_ref(A: torch.Tensor, per_row: bool):
    """``nd = 254 / (max - min)``, ``zp = -round(nd min) - 127``, ``A_q = round(nd A + zp)``."""
    hi = A.amax(dim=-1, keepdim=True) if per_row else A.amax()
    lo = A.amin(dim=-1, keepdim=True) if per_row else A.amin()
    nd = 254 / (hi - lo)
    zp = -torch.round(nd * lo) - 127
    return torch.round(nd * A + zp).clamp(-127, 127), zp, 1 / nd


def reference(X: torch.Tensor, W: torch.Tensor, spec: MethodSpec) -> torch.Tensor:
    """``C = Σ_{h∈O} X^h W^h + Σ_{h∉O} dequant(X_q^h) dequant(W_q^h)`` in float64 (the products of
    dequantized operands equal ``(s_x ⊗ s_w) (X_q - zp_x)(W_q - zp_w)^T`` exactly up to float64 rounding)."""
    X, W = X.double(), W.double()
    O = (X.abs() >= spec.threshold).any(0) if spec.threshold > 0 else torch.zeros(X.shape[1], dtype=torch.bool)
    Xr = X.masked_fill(O, 0)
    if spec.zeropoint:
        Xq, zx, sx = _zeropoint_ref(Xr, spec.x_per_row)
        Xd = (Xq - zx) * sx
    else:
        Xq, sx = _absmax_ref(Xr, spec.x_per_row)
        Xd = Xq * sx
    if spec.weight_zeropoint:
        Wq, zw, sw = _zeropoint_ref(W, spec.w_per_row)
        Wd = (Wq - zw) * sw
    else:
        Wq, sw = _absmax_ref(W, spec.w_per_row)
        Wd = Wq * sw
    C = Xd @ Wd.T
    W_O = W if spec.outlier_weight == "float" else Wd
    return C + X[:, O] @ W_O[:, O].T


def _operands(M=37, K=70, N=29, outlier_col=5, scale=20.0):
    X = torch.randn(M, K)
    X[:, outlier_col] *= scale  # one outlier feature dim, as in real hidden states
    W = torch.randn(N, K) * 0.05
    return X, W


ZEROPOINT_X_ABSMAX_W = MethodSpec(
    "zpx", "zeropoint X, absmax W", x_per_row=True, w_per_row=True, zeropoint=True, w_zeropoint=False, threshold=6.0
)


@pytest.mark.parametrize("name", [*EMULATED, "zeropoint-x-absmax-w"])
def test_emulated_method_matches_float64_formula(name):
    spec = ZEROPOINT_X_ABSMAX_W if name == "zeropoint-x-absmax-w" else METHODS[name]
    X, W = _operands()
    lin = nn.Linear(W.shape[1], W.shape[0], bias=False)
    lin.weight.data = W.clone()
    out = EmulatedInt8Linear.from_linear(lin, spec)(X)
    ref = reference(X, W, spec)
    assert out.dtype == X.dtype
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("name", EMULATED)
def test_reference_tells_methods_apart(name):
    """The comparison above can fail: every other method's formula is far from this one's output."""
    X, W = _operands()
    lin = nn.Linear(W.shape[1], W.shape[0], bias=False)
    lin.weight.data = W.clone()
    out = EmulatedInt8Linear.from_linear(lin, METHODS[name])(X).double()
    for other in EMULATED:
        if other != name:
            ref = reference(X, W, METHODS[other])
            assert (out - ref).abs().max() > 1e-3 * ref.abs().max(), other


def test_integer_product_is_exact_for_large_k():
    """The float64 integer sum equals an int64 GEMM bit for bit, also at the largest codes."""
    K = 8192
    A = torch.randint(-127, 128, (9, K), dtype=torch.int8)
    B = torch.randint(-127, 128, (7, K), dtype=torch.int8)
    A[0] = 127
    B[0] = -127  # a worst-case row: |sum| = K * 127**2
    one = torch.tensor(1.0)
    from llm_int8.primitives import QuantizedOperand

    C = exact_quantized_product(QuantizedOperand(A, one, None), QuantizedOperand(B, one, None))
    expected = A.long() @ B.long().T
    assert torch.equal(C.long(), expected)
    assert C[0, 0] == -K * 127**2


@pytest.mark.parametrize("precision", ["highest", "medium"])
def test_integer_product_is_exact_for_worst_zeropoint_codes(precision):
    """Centred zeropoint codes reach +-254: the float32 slices must stay below 2**24 (and a
    reduced float32 matmul precision must fall back to float64)."""
    K = 5000
    A = torch.randint(-254, 255, (6, K)).double()
    B = torch.randint(-254, 255, (5, K)).double()
    A[0], B[0] = 254.0, 254.0  # |sum| = K * 254**2 > 2**28
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        C = integer_matmul(A, B)
    finally:
        torch.set_float32_matmul_precision(before)
    assert C.dtype == torch.float64
    assert torch.equal(C.long(), A.long() @ B.long().T) and C[0, 0] == K * 254**2


def test_zeropoint_product_equals_unrolled_form():
    """(A_q - zp_a)(B_q - zp_b)^T == A_q B_q^T - zp_b Σ A_q - zp_a Σ B_q + K zp_a zp_b (the paper's unrolled form)."""
    X, W = _operands()
    Xq = quantize_operand(X, per_row=True, zeropoint=True)
    Wq = quantize_operand(W, per_row=True, zeropoint=True)
    K = X.shape[1]
    a, b = Xq.codes.long(), Wq.codes.long()
    za, zb = Xq.zero_point.long()[:, None], Wq.zero_point.long()[None, :]
    unrolled = a @ b.T - a.sum(1, keepdim=True) * zb - za * b.sum(1)[None, :] + K * za * zb
    centred = Xq.centred() @ Wq.centred().T
    assert torch.equal(centred.long(), unrolled)


def test_decomposition_keeps_outlier_column_exact():
    """With decomposition, an outlier column costs no precision; without it, it ruins the row scale."""
    X, W = _operands(scale=60.0)
    exact = X.double() @ W.double().T
    err = {}
    for name in ("rowwise", "rowwise+decomp"):
        Wq = quantize_operand(W, per_row=METHODS[name].w_per_row, zeropoint=False)
        spec = METHODS[name]
        C = emulated_int8_matmul(X, Wq, x_per_row=True, zeropoint=False, threshold=spec.threshold, W_outlier=W)
        err[name] = ((C - exact).norm() / exact.norm()).item()
    assert err["rowwise+decomp"] < err["rowwise"] / 3


@pytest.mark.parametrize("activation", ["absmax", "zeropoint"])
@pytest.mark.parametrize("threshold", [0.0, 6.0], ids=["vectorwise", "llm.int8"])
def test_emulation_with_int8_outlier_weight_matches_library(threshold, activation):
    """Emulated vector-wise (+ decomposition against the dequantized weight) == Int8Linear, up to float32,
    for both activation codes (zeropoint X with absmax W is what the library's default runs)."""
    X, W = _operands()
    X = X + 0.4  # rows not centred on 0
    lin = nn.Linear(W.shape[1], W.shape[0])
    lin.weight.data = W.clone()
    zp = activation == "zeropoint"
    spec = MethodSpec(
        "t",
        "t",
        x_per_row=True,
        w_per_row=True,
        zeropoint=zp,
        w_zeropoint=False,
        threshold=threshold,
        outlier_weight="int8",
    )
    emulated = EmulatedInt8Linear.from_linear(lin, spec)(X)
    library = Int8Linear.from_linear(lin, threshold, activation=activation)(X)
    torch.testing.assert_close(emulated, library, rtol=1e-5, atol=1e-5)
    W_i8, s_w = quantize_operand(W, per_row=True, zeropoint=False)[:2]
    ref = int8_linear_reference(X, W_i8, s_w, lin.bias, threshold, activation=activation)
    torch.testing.assert_close(library, ref, rtol=1e-5, atol=1e-5)


def test_default_method_is_what_quantize_model_gives():
    from llm_int8.config import DEFAULT_ACTIVATION, DEFAULT_THRESHOLD

    spec = METHODS["default"]
    assert spec.library and spec.threshold == DEFAULT_THRESHOLD
    assert ("zeropoint" if spec.zeropoint else "absmax") == DEFAULT_ACTIVATION
    assert METHODS["llm.int8"].threshold == 6.0 and not METHODS["llm.int8"].zeropoint  # the paper's, always


def test_tensorwise_scale_is_per_sequence():
    """A sequence's result does not depend on what else is in the batch."""
    lin = nn.Linear(16, 8)
    layer = EmulatedInt8Linear.from_linear(lin, METHODS["absmax"])
    a, b = torch.randn(1, 5, 16), torch.randn(1, 5, 16) * 100
    torch.testing.assert_close(layer(torch.cat([a, b]))[:1], layer(a))


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.block = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 8))
        self.lm_head = nn.Linear(8, 11, bias=False)
        self.lm_head.weight = self.emb.weight  # tied

    def forward(self, ids):
        return self.lm_head(self.block(self.emb(ids)))


@pytest.mark.parametrize("name", [n for n, spec in METHODS.items() if not spec.is_reference])
def test_apply_method_swaps_linears_and_leaves_model_untouched(name):
    if METHODS[name].bitsandbytes:
        bnb = pytest.importorskip("bitsandbytes")
    model = _Tiny()
    before = copy.deepcopy(model.state_dict())
    calibration = torch.randint(0, 11, (1, 8)) if METHODS[name].calibrated else None
    converted = apply_method(model, name, calibration_ids=calibration)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert isinstance(model.block[0], nn.Linear)
    spec = METHODS[name]
    if spec.is_float:
        assert converted is model
        return
    expected = Int8Linear if spec.library else bnb.nn.Linear8bitLt if spec.bitsandbytes else EmulatedInt8Linear
    assert isinstance(converted.block[0], expected) and isinstance(converted.block[2], expected)
    assert isinstance(converted.lm_head, nn.Linear)  # skipped (and tied)
    if spec.library:
        assert converted.block[0].threshold == spec.threshold
    out = converted(torch.tensor([[1, 2, 3]]))
    assert out.shape == (1, 3, 11) and torch.isfinite(out).all()


def test_parse_methods_errors_list_valid_names():
    assert [s.name for s in parse_methods("fp32, llm.int8")] == ["fp32", "llm.int8"]
    with pytest.raises(ValueError, match="valid methods: fp32, absmax"):
        parse_methods("fp32,int4")
    with pytest.raises(ValueError, match="twice"):
        parse_methods("absmax,absmax")
    with pytest.raises(ValueError, match="unknown method"):
        apply_method(_Tiny(), "int4")


def test_cli_default_methods_are_table_1():
    from llm_int8.cli.evaluate import _DEFAULT_METHODS

    assert _DEFAULT_METHODS.split(",") == list(METHODS)


def test_layer_errors_ranks_methods():
    from llm_int8.evaluation.diagnose import layer_errors

    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 16)
            self.emb.weight.data[:, 3] *= 30  # an outlier feature dim
            self.fc = nn.Linear(16, 16)
            self.lm_head = nn.Linear(16, 11)

        def forward(self, ids):
            return self.lm_head(self.fc(self.emb(ids)))

    rows = layer_errors(Emb(), torch.arange(11), ["absmax", "llm.int8"])
    assert [r["layer"] for r in rows] == ["fc"] and rows[0]["outlier_columns"] == 1
    assert rows[0]["llm.int8"] < rows[0]["absmax"] / 3


def test_calibrated_methods_need_calibration_ids_and_keep_value_projections_float():
    from _hf_tiny import VOCAB, tiny_model

    from llm_int8 import Int8Linear

    model = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 5] = 40.0  # a planted outlier dim on every token
    with pytest.raises(ValueError, match="calibration_ids"):
        apply_method(model, "calibrated")
    ids = torch.randint(0, VOCAB, (1, 24))
    calibrated = apply_method(model, "calibrated", calibration_ids=ids)
    q = calibrated.model.layers[0].self_attn.q_proj
    assert isinstance(q, Int8Linear) and 5 in q.float_dims.tolist() and q.threshold == 6.0
    precise = apply_method(model, "precise", calibration_ids=ids)
    assert not isinstance(precise.model.layers[0].self_attn.v_proj, Int8Linear)
    assert precise.model.layers[0].self_attn.q_proj.threshold == 3.0
    assert not isinstance(model.model.layers[0].self_attn.q_proj, Int8Linear)  # the original is untouched


# --- the 16-bit references ---------------------------------------------------------------------

REFERENCES = [n for n, spec in METHODS.items() if spec.is_reference]
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def test_reference_methods_are_the_two_dtypes_cast_and_weight_rounded():
    assert REFERENCES == ["bf16", "bf16-weights", "fp16", "fp16-weights"]
    for name in REFERENCES:
        spec = METHODS[name]
        assert not spec.library and not spec.bitsandbytes and spec.threshold == 0 and not spec.is_float
        assert spec.float_dtype in spec.description and spec.weights_only == name.endswith("-weights")
    with pytest.raises(ValueError, match="float_dtype must be one of"):
        MethodSpec("fp8", "x", float_dtype="float8")
    with pytest.raises(ValueError, match="quantizes nothing"):
        MethodSpec("x", "x", float_dtype="bfloat16", library=True, x_per_row=True, w_per_row=True)
    with pytest.raises(ValueError, match="set float_dtype"):
        MethodSpec("x", "x", weights_only=True)
    with pytest.raises(ValueError, match="not emulated"):
        EmulatedInt8Linear.from_linear(nn.Linear(4, 4), METHODS["bf16"])


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_cast_reference_runs_the_whole_model_in_its_dtype(name):
    from _hf_tiny import VOCAB, tiny_model

    model = tiny_model("llama", tie_word_embeddings=True)
    before = copy.deepcopy(model.state_dict())
    dtype = _DTYPES[METHODS[name].float_dtype]
    converted = apply_method(model, name)
    for k, v in model.state_dict().items():  # the original is untouched
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    assert all(p.dtype == dtype for p in converted.parameters())
    assert converted.lm_head.weight is converted.model.embed_tokens.weight  # still tied
    # computed buffers (rotary frequencies) keep float32, as when a model is loaded in 16 bits
    assert converted.model.rotary_emb.inv_freq.dtype == torch.float32
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        out, ref = converted(ids).logits, model(ids).logits
    assert out.dtype == dtype
    # the same as the float model loaded in that dtype (here: cast with .to, then the buffer restored)
    loaded = copy.deepcopy(model).to(dtype)
    loaded.model.rotary_emb.inv_freq = model.model.rotary_emb.inv_freq.clone()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, out)
    err = ((out.float() - ref).norm() / ref.norm()).item()
    assert 0 < err < 0.05  # 16-bit rounding: a difference, and a small one


@pytest.mark.parametrize("name", ["bf16-weights", "fp16-weights"])
def test_weight_rounding_reference_rounds_only_the_converted_linears(name):
    from _hf_tiny import VOCAB, tiny_model

    from llm_int8 import quantize_model

    model = tiny_model("llama")
    dtype = _DTYPES[METHODS[name].float_dtype]
    converted = apply_method(model, name)
    int8 = quantize_model(copy.deepcopy(model))
    converted_names = {n for n, m in int8.named_modules() if type(m).__name__ == "Int8Linear"}
    assert converted_names  # the same layers the int8 methods convert
    for (n, p), (_, q) in zip(model.named_parameters(), converted.named_parameters(), strict=True):
        assert q.dtype == torch.float32
        module = n.rpartition(".")[0]
        if module in converted_names and n.endswith(".weight"):
            assert torch.equal(q, p.to(dtype).float()) and not torch.equal(q, p), n
        else:  # embeddings (tied lm_head), norms, biases: as they were
            assert torch.equal(q, p), n
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        assert converted(ids).logits.dtype == torch.float32


def test_weight_rounding_reference_follows_skip_modules_and_gpt2_conv1d():
    from _hf_tiny import tiny_model

    model = tiny_model("gpt2")
    converted = apply_method(model, "bf16-weights", skip_modules=("lm_head", "c_proj"))
    for (n, p), (_, q) in zip(model.named_parameters(), converted.named_parameters(), strict=True):
        rounded = n.endswith(("c_attn.weight", "c_fc.weight"))
        assert torch.equal(q, p.bfloat16().float() if rounded else p), n
    with pytest.raises(ValueError, match="no linear layer to round"):
        apply_method(nn.Sequential(nn.ReLU()), "bf16-weights")
