"""The quantization methods of Table 1 of the LLM.int8() paper, applied to any model.

Each method is a module swap of every linear layer except ``lm_head`` (and any weight tied to
another module), like ``quantize_model``:

========================  ===========  ===============  ============  ====================================
method                    ``X`` scale  ``W`` scale      decomposition  how it runs
========================  ===========  ===============  ============  ====================================
``fp32``                  --           --               --            the model as loaded (its float dtype)
``absmax``                tensor       tensor           no            emulated, exact
``zeropoint``             tensor       tensor           no            emulated, exact
``rowwise``               per token    tensor           no            emulated, exact
``vectorwise``            per token    per out feature  no            library: ``quantize_model(threshold=0)``
``vectorwise-zeropoint``  per token    per out feature  no            emulated, exact (zeropoint)
``rowwise+decomp``        per token    tensor           yes, α = 6    emulated, exact; outliers vs float W
``llm.int8``              per token    per out feature  yes, α = 6    library: ``quantize_model(threshold=6)``
``zeropoint-llm.int8``    per token    per out feature  yes, α = 6    emulated, exact (zeropoint); float W
``default``               per token    per out feature  yes           library: ``quantize_model()`` with
                          (zeropoint)                                 this library's defaults
``calibrated``            per token    per out feature  yes, α = 6    library: ``default`` + calibrated
                          (zeropoint)                                 float dims
``precise``               per token    per out feature  yes, α = 3    library: ``calibrated`` at α = 3,
                          (zeropoint)                                 value projections kept in float
``batch_invariant``       per token    per out feature  yes, α = 6,   library: ``default`` with
                          (zeropoint)                   per token     ``batch_invariant=True``
``bitsandbytes``          per token    per out feature  yes, α = 6    bitsandbytes ``Linear8bitLt`` (where
                                                                      installed), the paper's method as
                                                                      its authors ship it
``bf16``, ``fp16``        --           --               --            16-bit reference: the whole model
                                                                      cast to that dtype
``bf16-weights``,         --           --               --            16-bit reference: the fp32 model with
``fp16-weights``                                                      the weights of the linears the int8
                                                                      methods convert rounded to that dtype
========================  ===========  ===============  ============  ====================================

The first nine are the paper's Table 1 (absmax activations unless named zeropoint, α = 6 where
decomposed); ``default`` is what ``quantize_model(model)`` gives, for the comparison with them.
``calibrated`` and ``precise`` are this library's steps towards fp32 (RESULTS.md, section 4):
"calibrated float dims" are the input dims that reach α on at least 6% of the tokens of
``llm_int8.analysis.CALIBRATION_TEXT`` (never the evaluated text), always computed in float with
their float weight columns (``quantize_model(float_dims=...)``); ``precise`` also keeps the value
projections (``v_proj``, ``value``) in float and decomposes from α = 3.

The 16-bit references answer the paper's claim, which is "no degradation against 16-bit": ``bf16``
/ ``fp16`` are the model a user would otherwise run (parameters and persistent buffers cast; buffers
a model computes rather than loads, such as rotary frequencies, stay as they are, as they do when a
model is loaded in that dtype), run in that dtype; ``bf16-weights`` / ``fp16-weights`` keep the fp32
model and only round the weights of exactly the linear layers the int8 methods convert (same
``skip_modules``, tied weights left), so the difference between the two rows is what the
activations and the rest of the model contribute. Every measure still compares against ``fp32``.

"Emulated, exact" means ``EmulatedInt8Linear``: int8 codes held as float integers and multiplied
where no partial sum can be rounded (float32 over short slices of K, summed in float64), so the
integer GEMM is reproduced bit for bit (see ``llm_int8.primitives.emulation``). "Tensor" scales are taken
per sequence (per leading batch element of the layer input), so a method's result on a sequence
does not depend on what else is in the batch. The library methods run the real ``Int8Linear``,
whose outlier part multiplies the outlier columns of ``X`` by the *dequantized* int8 weight columns
(it stores no float weight); the emulated decomposition methods use the float weight columns, the
paper's ``X_f16^h W_f16^h``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..analysis.calibration import calibrate_outlier_dims
from ..config import DEFAULT_ACTIVATION, DEFAULT_SKIP_MODULES, DEFAULT_THRESHOLD, PAPER_THRESHOLD, Int8Config
from ..integrations import quantize_model
from ..primitives import QuantizedOperand, emulated_int8_matmul, quantize_operand
from .external import to_bitsandbytes

__all__ = ["METHODS", "EmulatedInt8Linear", "MethodSpec", "apply_method", "parse_methods"]


@dataclass(frozen=True)
class MethodSpec:
    """One row of Table 1.

    ``library``: run the real ``Int8Linear`` (then only ``threshold`` and ``zeropoint``, the activation
    codes, matter; the weight is always absmax vector-wise). Otherwise emulate with
    ``x_per_row`` / ``w_per_row`` scales, ``zeropoint`` (asymmetric) codes, and decomposition at
    ``threshold`` (0 = off) whose outlier columns meet the float weight (``outlier_weight="float"``)
    or the dequantized int8 weight (``"int8"``).
    """

    name: str
    description: str
    library: bool = False
    x_per_row: bool = False
    w_per_row: bool = False
    zeropoint: bool = False
    threshold: float = 0.0
    outlier_weight: str = "float"
    w_zeropoint: bool | None = None  # None: as ``zeropoint``; False: zeropoint X with absmax W
    calibrated: bool = False  # library only: float dims calibrated on CALIBRATION_TEXT
    keep_float: tuple[str, ...] = ()  # library only: module names kept in float besides lm_head
    bitsandbytes: bool = False  # run bitsandbytes' Linear8bitLt at ``threshold`` instead
    batch_invariant: bool = False  # library only: Int8Linear.batch_invariant (per-token outliers)
    float_dtype: str | None = None  # a 16-bit reference: "bfloat16" or "float16" (no int8 at all)
    weights_only: bool = False  # with float_dtype: round only the converted linears' weights, run in fp32
    # an experimental variant: converts a copy of the model itself (the other fields are then only labels)
    convert: Callable[[nn.Module], nn.Module] | None = field(default=None, compare=False, repr=False)

    @property
    def weight_zeropoint(self) -> bool:
        return self.zeropoint if self.w_zeropoint is None else self.w_zeropoint

    def __post_init__(self) -> None:
        if self.outlier_weight not in ("float", "int8"):
            raise ValueError(f"outlier_weight must be 'float' or 'int8', got {self.outlier_weight!r}")
        if not self.threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if self.library and self.weight_zeropoint:
            raise ValueError("library methods store an absmax vector-wise weight: set w_zeropoint=False")
        if (self.calibrated or self.keep_float or self.batch_invariant) and not self.library:
            raise ValueError("calibrated float dims and keep_float apply to library methods only")
        if self.bitsandbytes and self.library:
            raise ValueError("a method runs either this library's Int8Linear or bitsandbytes, not both")
        if self.float_dtype is not None:
            if self.float_dtype not in _FLOAT_DTYPES:
                raise ValueError(f"float_dtype must be one of {', '.join(_FLOAT_DTYPES)}, got {self.float_dtype!r}")
            if self.library or self.bitsandbytes or self.threshold:
                raise ValueError("a 16-bit reference method quantizes nothing: no library, bitsandbytes or threshold")
        elif self.weights_only:
            raise ValueError("weights_only applies to a 16-bit reference method: set float_dtype")

    @property
    def is_float(self) -> bool:
        return self.name == "fp32"

    @property
    def is_reference(self) -> bool:
        """A 16-bit reference (``bf16``, ``fp16`` and their weight-only roundings), not an int8 method."""
        return self.float_dtype is not None


_FLOAT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_A = PAPER_THRESHOLD
_REFERENCES = tuple(
    m
    for short, dtype in (("bf16", "bfloat16"), ("fp16", "float16"))
    for m in (
        MethodSpec(short, f"16-bit reference: the whole model cast to {dtype}", float_dtype=dtype),
        MethodSpec(
            f"{short}-weights",
            f"16-bit reference: fp32, the converted linears' weights rounded to {dtype}",
            float_dtype=dtype,
            weights_only=True,
        ),
    )
)
_DEFAULT = MethodSpec(
    "default",
    f"llm-int8's default: LLM.int8(), {DEFAULT_ACTIVATION} per-token activations, α = {DEFAULT_THRESHOLD:g}",
    library=True,
    x_per_row=True,
    w_per_row=True,
    zeropoint=DEFAULT_ACTIVATION == "zeropoint",
    w_zeropoint=False,
    threshold=DEFAULT_THRESHOLD,
    outlier_weight="int8",
)
METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("fp32", "32-bit float (the model's own dtype)"),
        MethodSpec("absmax", "int8 absmax"),
        MethodSpec("zeropoint", "int8 zeropoint", zeropoint=True),
        MethodSpec("rowwise", "int8 absmax row-wise", x_per_row=True),
        MethodSpec("vectorwise", "int8 absmax vector-wise", library=True, x_per_row=True, w_per_row=True),
        MethodSpec(
            "vectorwise-zeropoint", "int8 zeropoint vector-wise", x_per_row=True, w_per_row=True, zeropoint=True
        ),
        MethodSpec("rowwise+decomp", "int8 absmax row-wise + decomposition", x_per_row=True, threshold=_A),
        MethodSpec(
            "llm.int8",
            "absmax LLM.int8() (vector-wise + decomposition)",
            library=True,
            x_per_row=True,
            w_per_row=True,
            threshold=_A,
            outlier_weight="int8",
        ),
        MethodSpec(
            "zeropoint-llm.int8",
            "zeropoint LLM.int8()",
            x_per_row=True,
            w_per_row=True,
            zeropoint=True,
            threshold=_A,
        ),
        _DEFAULT,
        replace(
            _DEFAULT,
            name="calibrated",
            description=f"default + calibrated outlier dims in float, α = {DEFAULT_THRESHOLD:g}",
            calibrated=True,
        ),
        replace(
            _DEFAULT,
            name="precise",
            description="calibrated, α = 3, value projections in float",
            threshold=3.0,
            calibrated=True,
            keep_float=("v_proj", "value"),
        ),
        replace(
            _DEFAULT,
            name="batch_invariant",
            description="default in the batch-invariant mode: per-token outliers, no weight-only kernel",
            batch_invariant=True,
        ),
        MethodSpec(
            "bitsandbytes",
            "bitsandbytes Linear8bitLt: LLM.int8(), absmax, α = 6",
            x_per_row=True,
            w_per_row=True,
            threshold=_A,
            outlier_weight="int8",
            bitsandbytes=True,
        ),
        *_REFERENCES,
    )
}
"""Methods by name: the paper's Table 1 in its order, this library's default and steps, bitsandbytes,
then the 16-bit references."""


def parse_methods(text: str | list[str] | list[MethodSpec]) -> list[MethodSpec]:
    """``"fp32,absmax,llm.int8"`` (or a list of names) -> specs; an unknown name lists the valid ones."""
    if isinstance(text, list) and text and all(isinstance(m, MethodSpec) for m in text):
        return list(text)  # already specs (e.g. an experimental variant)
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ValueError(f"no method given; valid methods: {', '.join(METHODS)}")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; valid methods: {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"method listed twice in {names}")
    return [METHODS[n] for n in names]


class EmulatedInt8Linear(nn.Module):
    """A linear layer computing one Table 1 variant of ``Y = X W^T + b`` with exact integer emulation.

    Keeps the float weight (for the decomposition's outlier columns) and its int8 quantization,
    made once at construction: ``W_q``, ``s_w``, ``zp_w`` (per output row or one for the tensor).
    The activation ``X`` is quantized on the fly, per token or per sequence; the product is
    ``llm_int8.primitives.emulated_int8_matmul`` in float64, cast to ``X``'s dtype.
    For measurement only: it is slower and larger than ``nn.Linear``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, spec: MethodSpec) -> None:
        super().__init__()
        if spec.library or spec.is_float or spec.is_reference:
            raise ValueError(f"method {spec.name!r} is not emulated")
        self.spec = spec
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]
        W = weight.detach().float()  # (out, in)
        Wq = quantize_operand(W, per_row=spec.w_per_row, zeropoint=spec.weight_zeropoint)
        self.register_buffer("weight", W)
        self.register_buffer("weight_q", Wq.codes)
        self.register_buffer("weight_scale", Wq.scale)
        self.register_buffer("weight_zero_point", Wq.zero_point)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        # (W_q - zp_w) as float32 integers (exact), converted once rather than on every forward (not saved)
        self.register_buffer("weight_centred", Wq.centred(torch.float32), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Module, spec: MethodSpec) -> EmulatedInt8Linear:
        """From an ``nn.Linear`` or a GPT-2 ``Conv1D`` (whose weight is stored (in, out))."""
        if isinstance(linear, nn.Linear):
            return cls(linear.weight, linear.bias, spec)
        if _is_conv1d(linear):
            return cls(linear.weight.T, linear.bias, spec)
        raise TypeError(f"expected nn.Linear or transformers Conv1D, got {type(linear).__name__}")

    def _quantized_weight(self) -> QuantizedOperand:
        return QuantizedOperand(self.weight_q, self.weight_scale, self.weight_zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, the layer expects {self.in_features}")
        spec = self.spec
        W_outlier = self.weight if spec.outlier_weight == "float" else None
        # Tensor-wise X scales are taken per sequence: (batch, seq, K) -> batch of (seq, K) tensors.
        X = x.reshape(-1, x.shape[-2], self.in_features) if (x.dim() >= 3 and not spec.x_per_row) else None
        if X is None:
            X2 = x.reshape(-1, self.in_features)  # (tokens, in_features)
            C = emulated_int8_matmul(
                X2,
                self._quantized_weight(),
                x_per_row=spec.x_per_row,
                zeropoint=spec.zeropoint,
                threshold=spec.threshold,
                W_outlier=W_outlier,
                W_centred=self.weight_centred,
            )  # (tokens, out) float64
        else:
            C = torch.stack(
                [
                    emulated_int8_matmul(
                        X_b,
                        self._quantized_weight(),
                        x_per_row=False,
                        zeropoint=spec.zeropoint,
                        threshold=spec.threshold,
                        W_outlier=W_outlier,
                        W_centred=self.weight_centred,
                    )
                    for X_b in X  # (seq, in_features) each
                ]
            )  # (batch, seq, out) float64
        if self.bias is not None:
            C = C + self.bias.double()
        return C.to(x.dtype).reshape(*x.shape[:-1], self.out_features)  # (..., out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, method={self.spec.name}"


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def _linear_targets(model: nn.Module, skip_modules: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """Every linear layer (``nn.Linear`` or ``Conv1D``) not skipped and whose weight no other module shares."""
    config = Int8Config(skip_modules=skip_modules)
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return [
        (name, m)
        for name, m in model.named_modules()
        if (isinstance(m, nn.Linear) or _is_conv1d(m)) and not config.skips(name) and owners.get(id(m.weight), 0) < 2
    ]


def _swap_linears(model: nn.Module, spec: MethodSpec, skip_modules: tuple[str, ...]) -> list[str]:
    """Replace every linear (not skipped, weight not shared) with ``EmulatedInt8Linear``; returns names."""
    targets = _linear_targets(model, skip_modules)
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, EmulatedInt8Linear.from_linear(module, spec))
    return [n for n, _ in targets]


def _cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` (in place) in ``dtype``: parameters and persistent floating buffers; non-persistent
    ones (computed at construction, e.g. rotary ``inv_freq``) keep their dtype, as when loading in ``dtype``."""
    for module in model.modules():
        kept = {n: b for n, b in module._buffers.items() if b is not None and n in module._non_persistent_buffers_set}
        for p in module.parameters(recurse=False):
            if p.is_floating_point():
                p.data = p.data.to(dtype)
        for n, b in module._buffers.items():
            if b is not None and n not in kept and b.is_floating_point():
                module._buffers[n] = b.to(dtype)
    if hasattr(model, "config") and hasattr(model.config, "dtype"):
        model.config.dtype = dtype
    return model


def _round_linear_weights(model: nn.Module, dtype: torch.dtype, skip_modules: tuple[str, ...]) -> nn.Module:
    """``model`` (in place) with the weight of every linear the int8 methods convert rounded to ``dtype``
    and stored back in its own dtype; biases, norms, embeddings and skipped layers untouched."""
    targets = _linear_targets(model, skip_modules)
    if not targets:
        raise ValueError("the model has no linear layer to round")
    for _, module in targets:
        module.weight.data = module.weight.data.to(dtype).to(module.weight.dtype)
    return model


def apply_method(
    model: nn.Module,
    method: str | MethodSpec,
    skip_modules: tuple[str, ...] = DEFAULT_SKIP_MODULES,
    calibration_ids: torch.Tensor | None = None,
) -> nn.Module:
    """A copy of ``model`` with its linear layers replaced as ``method`` says; ``model`` is untouched.

    ``fp32`` returns ``model`` itself (no copy). Library methods call ``quantize_model``; a
    ``calibrated`` method first finds its float dims on ``calibration_ids`` (required for it);
    ``bitsandbytes`` swaps in bitsandbytes' ``Linear8bitLt``; a spec with ``convert`` calls it on the copy;
    a 16-bit reference casts the copy (``bf16``, ``fp16``) or rounds its linears' weights (``*-weights``).
    """
    spec = parse_methods([method])[0] if isinstance(method, str) else method
    if spec.is_float:
        return model
    converted = copy.deepcopy(model)
    if spec.convert is not None:
        return spec.convert(converted)
    if spec.is_reference:
        dtype = _FLOAT_DTYPES[spec.float_dtype]
        if spec.weights_only:
            return _round_linear_weights(converted, dtype, tuple(skip_modules))
        return _cast_model(converted, dtype)
    if spec.library:
        activation = "zeropoint" if spec.zeropoint else "absmax"
        skip = tuple(skip_modules) + spec.keep_float
        float_dims = None
        if spec.calibrated:
            if calibration_ids is None:
                raise ValueError(f"method {spec.name!r} calibrates its float dims: pass calibration_ids")
            float_dims = calibrate_outlier_dims(converted, calibration_ids, spec.threshold, skip_modules=skip)
        return quantize_model(
            converted,
            threshold=spec.threshold,
            skip_modules=skip,
            activation=activation,
            float_dims=float_dims,
            batch_invariant=spec.batch_invariant,
        )
    if spec.bitsandbytes:
        targets = _linear_targets(converted, tuple(skip_modules))
        if not targets:
            raise ValueError(f"method {spec.name!r}: the model has no linear layer to quantize")
        return to_bitsandbytes(converted, targets, threshold=spec.threshold)
    if not _swap_linears(converted, spec, tuple(skip_modules)):
        raise ValueError(f"method {spec.name!r}: the model has no linear layer to quantize")
    return converted
