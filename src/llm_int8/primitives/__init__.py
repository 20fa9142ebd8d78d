"""Pure math on tensors: quantizers, outlier detection and the exact reference matmuls.

Nothing here picks a device or a kernel; ``llm_int8.ops`` does.
"""

from .outliers import outlier_columns
from .quantize import INT8_MAX, absmax_quantize, dequantize, rowwise_quantize, zeropoint_params, zeropoint_quantize
from .reference import (
    ACTIVATION_QUANTIZERS,
    int8_linear_reference,
    int8_matmul_reference,
    int8_weight_only_reference,
)

__all__ = [
    "ACTIVATION_QUANTIZERS",
    "INT8_MAX",
    "absmax_quantize",
    "dequantize",
    "int8_linear_reference",
    "int8_matmul_reference",
    "int8_weight_only_reference",
    "outlier_columns",
    "rowwise_quantize",
    "zeropoint_params",
    "zeropoint_quantize",
]

from .emulation import (  # noqa: E402
    QuantizedOperand,
    emulated_int8_matmul,
    exact_quantized_product,
    integer_matmul,
    quantize_operand,
)

__all__ += ["QuantizedOperand", "emulated_int8_matmul", "exact_quantized_product", "integer_matmul", "quantize_operand"]
