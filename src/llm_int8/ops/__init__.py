"""One public entry per operation; each dispatches to the fastest exact backend for the device."""

from .int8_linear import int8_linear
from .int8_mm import int8_mm

__all__ = ["int8_linear", "int8_mm"]
