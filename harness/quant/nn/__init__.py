"""qbc's quantized modules on plain integer tensors (conventions in :mod:`._base`)."""

from harness.quant.nn import dynamic
from harness.quant.nn.conv import Conv1d, Conv2d, Conv3d, ConvReLU2d, ConvReLU3d
from harness.quant.nn.dynamic import LSTM
from harness.quant.nn.dynamic import Linear as DynamicLinear
from harness.quant.nn.embedding import Embedding, EmbeddingBag
from harness.quant.nn.linear import Linear, LinearReLU
from harness.quant.nn.stubs import DeQuantize, Quantize

__all__ = [
    "LSTM",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvReLU2d",
    "ConvReLU3d",
    "DeQuantize",
    "DynamicLinear",
    "Embedding",
    "EmbeddingBag",
    "Linear",
    "LinearReLU",
    "Quantize",
    "dynamic",
]
