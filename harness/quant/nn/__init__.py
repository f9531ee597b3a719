"""qbc's quantized modules on plain integer tensors with explicit qparams.

Call conventions (details and math in each module's docstring, shared rules in :mod:`._base`):

========================== ============================================= ==========================
module                     forward                                       from_float takes
========================== ============================================= ==========================
Quantize(scale, zp, dtype) ``x -> (q, scale, zero_point)``                (``from_observer(obs)``)
DeQuantize()               ``(q, scale, zero_point) -> x``                -
Linear, LinearReLU         ``(q_x, x_scale, x_zero_point) -> (q_y, s, z)`` nn.Linear / (Linear, ReLU)
Conv1d/2d/3d, ConvReLU2d/3d ``(q_x, x_scale, x_zero_point) -> (q_y, s, z)`` nn.ConvNd / (ConvNd, ReLU)
DynamicLinear              ``x -> y`` (float)                              nn.Linear
LSTM                       ``(input, hx=None) -> (output, (h_n, c_n))``    nn.LSTM
Embedding                  ``indices -> rows`` (float)                     nn.Embedding
EmbeddingBag               ``(indices, offsets=None, psw=None) -> bags``   nn.EmbeddingBag
========================== ============================================= ==========================

Static modules need the float module's ``.qconfig`` and a calibrated
``.activation_post_process``; dynamic and embedding modules only ``.qconfig``. The engine is
``module.engine`` (``set_engine(name)``), or, when that is ``""``, the innermost
``harness.quant.engines.use_engine(name)`` (default ``reference``).
"""

from harness.quant.nn import dynamic
from harness.quant.nn._base import QuantizedModule
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
    "QuantizedModule",
    "dynamic",
]
