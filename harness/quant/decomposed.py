"""The ``quantized_decomposed`` op namespace that exported quantized graphs are written in.

ExecuTorch and Inductor lowerings pattern-match ``quantized_decomposed.quantize_per_tensor`` /
``dequantize_per_tensor`` / ``*_per_channel``; qbc emits exactly those ops. torch registers them
only when ``torch.ao.quantization.fx._decomposed`` is imported, and a future torch may drop that
module: then qbc defines the identical schemas itself, implemented with its own primitives and
computing what torch's kernels compute, op for op: the same dtypes out (``choose_qparams*``
return a float64 scale and an int64 zero point), the same precision inside (a dequantize
computes in ``out_dtype``, double scales stay double), the same values (tested against torch's
registration in ``tests/quant/test_decomposed.py``).
Importing :mod:`harness.quant` calls :func:`ensure_registered`, and so does the reader of exported
goldens (:mod:`harness.formats.exported`), so loading a ``.pt2`` never depends on the caller
having imported the right torch module first.
"""

from __future__ import annotations

import functools
import importlib

import torch

from harness import compat
from harness.quant import primitives as P

# Schemas copied verbatim from the ecosystem's definition: a .pt2 stores op names and argument
# lists, so ours must be indistinguishable from torch's.
_SCHEMAS = {
    "quantize_per_tensor": "quantize_per_tensor(Tensor input, float scale, int zero_point, "
    "int quant_min, int quant_max, ScalarType dtype) -> Tensor",
    "quantize_per_tensor.tensor": "quantize_per_tensor.tensor(Tensor input, Tensor scale, "
    "Tensor zero_point, int quant_min, int quant_max, ScalarType dtype) -> Tensor",
    "dequantize_per_tensor": "dequantize_per_tensor(Tensor input, float scale, int zero_point, "
    "int quant_min, int quant_max, ScalarType dtype, *, ScalarType? out_dtype=None) -> Tensor",
    "dequantize_per_tensor.tensor": "dequantize_per_tensor.tensor(Tensor input, Tensor scale, "
    "Tensor zero_point, int quant_min, int quant_max, ScalarType dtype, *, "
    "ScalarType? out_dtype=None) -> Tensor",
    "quantize_per_channel": "quantize_per_channel(Tensor input, Tensor scales, "
    "Tensor zero_points, int axis, int quant_min, int quant_max, ScalarType dtype) -> Tensor",
    "dequantize_per_channel": "dequantize_per_channel(Tensor input, Tensor scales, "
    "Tensor? zero_points, int axis, int quant_min, int quant_max, ScalarType dtype, *, "
    "ScalarType? out_dtype=None) -> Tensor",
    "choose_qparams.tensor": "choose_qparams.tensor(Tensor input, int quant_min, "
    "int quant_max, float eps, ScalarType dtype) -> (Tensor, Tensor)",
    "choose_qparams_symmetric.tensor": "choose_qparams_symmetric.tensor(Tensor input, "
    "int quant_min, int quant_max, float eps, ScalarType dtype) -> (Tensor, Tensor)",
}

_library: torch.library.Library | None = None
source: str = "unregistered"


def _quantize(input, scale, zero_point, quant_min, quant_max, dtype):
    # A float scale stays float64 until the kernel takes 1/s, as torch's op does; float8 dtypes
    # go through the same round-and-clamp as integers there, so ours must too.
    s = torch.as_tensor(scale, dtype=torch.float64)
    q = P.quantize_kernel(
        input, s, torch.as_tensor(zero_point), quant_min, quant_max, torch.float32
    )
    return q.to(dtype)


def _dequantize(input, scale, zero_point, quant_min, quant_max, dtype, *, out_dtype=None):
    # torch's op computes in ``out_dtype`` itself: ``(q.to(out_dtype) - z) * s`` with the scale
    # a Python float, i.e. rounded to ``out_dtype`` by the multiply.
    out_dtype = torch.float32 if out_dtype is None else out_dtype
    z = int(torch.as_tensor(zero_point).reshape(-1)[0])
    s = float(torch.as_tensor(scale, dtype=torch.float64).reshape(-1)[0])
    return (input.to(out_dtype) - z) * s


def _quantize_per_channel(input, scales, zero_points, axis, quant_min, quant_max, dtype):
    if scales.dtype == torch.float64:
        # 1/s in double, as torch's op does for double scales (the kernel takes float32)
        x = torch.movedim(input.to(torch.float32), axis, -1)
        q = torch.round(x * (1.0 / scales)) + zero_points.to(torch.float64)
        q = torch.clamp(q, quant_min, quant_max).to(dtype)
        return torch.movedim(q, -1, axis)
    return P.quantize_kernel(input, scales, zero_points, quant_min, quant_max, dtype, axis)


def _dequantize_per_channel(
    input, scales, zero_points, axis, quant_min, quant_max, dtype, *, out_dtype=None
):
    # ``(q - z) * s`` in the promoted dtype of the scales (float64 scales stay double), then
    # one rounding to ``out_dtype``, as torch's op does.
    out_dtype = torch.float32 if out_dtype is None else out_dtype
    x = torch.movedim(input, axis, -1)
    diff = x if zero_points is None else x.to(torch.int64) - zero_points.to(torch.int64)
    return torch.movedim((diff * scales).to(out_dtype), -1, axis)


def _choose(input, quant_min, quant_max, eps, dtype, qscheme):
    """torch's ``determine_qparams`` over ``aminmax(input)``: computed in the input's dtype (a
    float16 range gives a float16 scale before ``eps`` promotes it), the symmetric uint8 zero
    point 128 whatever ``quant_min``/``quant_max`` (the op passes no customized range), and
    the results as float64 scale / int64 zero point, shape ``[1]``."""
    lo, hi = torch.aminmax(input.detach())
    dtype = P.as_plain_dtype(dtype)
    scale, zero_point = P.choose_qparams_kernel(
        lo,
        hi,
        quant_min,
        quant_max,
        P.qparams_mode(qscheme),
        P.symmetric_zero_point(dtype, quant_min, quant_max, False),
        torch.tensor([eps], dtype=torch.float32),
    )
    return scale.to(torch.float64), zero_point.to(torch.int64)


def _define_ours(namespace: str = "quantized_decomposed") -> torch.library.Library:
    """Define the schemas under ``namespace`` with qbc's kernels (tests use another namespace
    to compare ours with torch's op for op)."""
    lib = torch.library.Library(namespace, "DEF")
    impls = {
        "quantize_per_tensor": _quantize,
        "quantize_per_tensor.tensor": _quantize,
        "dequantize_per_tensor": _dequantize,
        "dequantize_per_tensor.tensor": _dequantize,
        "quantize_per_channel": _quantize_per_channel,
        "dequantize_per_channel": _dequantize_per_channel,
        "choose_qparams.tensor": lambda i, a, b, e, d: _choose(
            i, a, b, e, d, torch.per_tensor_affine
        ),
        "choose_qparams_symmetric.tensor": lambda i, a, b, e, d: _choose(
            i, a, b, e, d, torch.per_tensor_symmetric
        ),
    }
    for name, schema in _SCHEMAS.items():
        lib.define(schema)
        lib.impl(name, impls[name], "CompositeExplicitAutograd")
    return lib


@functools.cache
def ensure_registered() -> str:
    """Make ``torch.ops.quantized_decomposed`` usable; return who registered it.

    ``"torch"`` when this torch ships the ops, ``"qbc"`` when qbc had to define them.
    """
    global _library, source
    try:
        importlib.import_module("torch.ao.quantization.fx._decomposed")
        source = "torch"
    except ImportError:
        _library = _define_ours()
        source = "qbc"
    # Registering overloads retires op objects torch.jit still knows by id: repair that table
    # before anything is scripted (harness.compat.keep_jit_builtins_stable says why).
    compat.keep_jit_builtins_stable()
    return source
