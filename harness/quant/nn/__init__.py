"""qbc's quantized modules on plain integer tensors (conventions in :mod:`._base`)."""

from harness.quant.nn.linear import Linear, LinearReLU
from harness.quant.nn.stubs import DeQuantize, Quantize

__all__ = ["DeQuantize", "Linear", "LinearReLU", "Quantize"]
