"""Quantization numerics on plain tensors: qparams, quantize, dequantize, fake-quantize.

Quantized values are ordinary integer tensors (uint8, int8, int16, int32) or float8 tensors;
the scale and zero point travel beside them explicitly. Nothing here uses torch's deprecated
quantized dtypes.

Affine quantization maps a real ``x`` to an integer ``q`` with a scale ``s > 0`` and a zero point
``z`` in ``[quant_min, quant_max]``::

    q = clamp(round(x * (1 / s)) + z, quant_min, quant_max)      (round half to even)
    x' = (q - z) * s

so ``|x - x'| <= s / 2`` for every ``x`` inside the representable range
``[(quant_min - z) * s, (quant_max - z) * s]`` (up to float32 rounding of ``x * (1 / s)``).
The multiply by ``1 / s`` (not a divide by ``s``) matches the ``quantized_decomposed`` ops that
exported graphs use, so eager code and exported programs agree to the bit (tested); like them,
per-tensor quantize forms ``1 / s`` in double and per-channel in float32, and fake-quant uses
float32 as torch's fake-quant kernels do. Values beyond the range saturate at ``quant_min`` /
``quant_max`` for every dtype, int32 and ``inf`` included, as ``torch.quantize_per_tensor``
does (torch's ``quantized_decomposed`` op wraps an int32 overflow to INT32_MIN instead: the
one case where eager and an exported graph differ).

Float zero points (``per_channel_affine_float_qparams``, embedding tables) enter the rounding:
``q = clamp(round(x * (1 / s) + z), quant_min, quant_max)``, ``z = -min / s``.

4-bit codes (``torch.uint4`` / ``torch.int4``, legacy ``torch.quint4x2``) have ranges [0, 15] /
[-8, 7] and are stored one per byte (:func:`storage_dtype`).

Float8 quantization is scale-only: ``q = clamp(x / s, -fmax, fmax).to(float8)``.

Two layers. The *public API* (``quantize``, ``dequantize``, ``fake_quantize``,
``choose_qparams``, ...) validates its arguments first and raises ``ValueError`` naming the
argument. The *kernel layer* (``quantize_kernel``, ``dequantize_kernel``,
``fake_quantize_kernel``, ``choose_qparams_kernel``) is what the rest of :mod:`harness.quant`
computes with: unchecked, TorchScript- and export-friendly (no data-dependent validation), and
part of scripted goldens' code, so its names and signatures are stable API.
"""

import torch

__all__ = [
    "DEFAULT_EPS",
    "FLOAT8_DTYPES",
    "INTEGER_DTYPES",
    "PER_CHANNEL_SCHEMES",
    "PER_TENSOR_SCHEMES",
    "QPARAMS_AFFINE",
    "QPARAMS_FLOAT",
    "QPARAMS_SYMMETRIC",
    "SUB_BYTE_DTYPES",
    "SUPPORTED_DTYPES",
    "SYMMETRIC_SCHEMES",
    "as_plain_dtype",
    "check_qparams",
    "choose_qparams",
    "choose_qparams_kernel",
    "choose_qparams_per_group",
    "dequantize",
    "dequantize_float8",
    "dequantize_kernel",
    "dequantize_per_group",
    "dtype_bounds",
    "fake_quantize",
    "fake_quantize_kernel",
    "qparams_mode",
    "quant_range",
    "quantize",
    "quantize_float8",
    "quantize_kernel",
    "quantize_per_group",
    "storage_dtype",
    "symmetric_zero_point",
]

INTEGER_DTYPES = (torch.uint8, torch.int8, torch.uint16, torch.int16, torch.int32)
# 4-bit codes (embedding weight-only) are described by torch.uint4 / torch.int4 but stored in
# uint8 / int8 tensors: this torch cannot copy into its 4-bit dtypes.
SUB_BYTE_DTYPES = (torch.uint4, torch.int4)
FLOAT8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SUPPORTED_DTYPES = INTEGER_DTYPES + SUB_BYTE_DTYPES + FLOAT8_DTYPES
_SUB_BYTE_BOUNDS = {torch.uint4: (0, 15), torch.int4: (-8, 7)}
_STORAGE = {torch.uint4: torch.uint8, torch.int4: torch.int8}

PER_TENSOR_SCHEMES = (torch.per_tensor_affine, torch.per_tensor_symmetric)
PER_CHANNEL_SCHEMES = (
    torch.per_channel_affine,
    torch.per_channel_symmetric,
    torch.per_channel_affine_float_qparams,
)
SYMMETRIC_SCHEMES = (torch.per_tensor_symmetric, torch.per_channel_symmetric)

# The smallest scale qparams may produce, as in torch.ao: float32 machine epsilon.
DEFAULT_EPS = torch.finfo(torch.float32).eps


def as_plain_dtype(dtype: torch.dtype) -> torch.dtype:
    """Map torch's quantized dtypes (quint8, qint8, qint32) to the plain integer dtype they store.

    Plain dtypes pass through; anything else raises ``ValueError`` naming ``dtype``.
    """
    legacy = {
        torch.quint8: torch.uint8,
        torch.qint8: torch.int8,
        torch.qint32: torch.int32,
        torch.quint4x2: torch.uint4,
    }
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype: expected a torch.dtype, got {dtype!r}")
    dtype = legacy.get(dtype, dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"dtype: unsupported quantized dtype {dtype}; expected one of "
            f"{[str(d) for d in SUPPORTED_DTYPES]}"
        )
    return dtype


def dtype_bounds(dtype: torch.dtype) -> tuple[int, int]:
    """The full representable range of ``dtype``: iinfo for integers, +-finfo.max for float8."""
    dtype = as_plain_dtype(dtype)
    if dtype in FLOAT8_DTYPES:
        fmax = int(torch.finfo(dtype).max)
        return -fmax, fmax
    if dtype in SUB_BYTE_DTYPES:
        return _SUB_BYTE_BOUNDS[dtype]
    info = torch.iinfo(dtype)
    return int(info.min), int(info.max)


def storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """The tensor dtype quantized codes of ``dtype`` are stored in (4-bit codes: one per byte)."""
    dtype = as_plain_dtype(dtype)
    return _STORAGE.get(dtype, dtype)


def quant_range(
    dtype: torch.dtype,
    quant_min: int | None = None,
    quant_max: int | None = None,
    reduce_range: bool = False,
) -> tuple[int, int]:
    """The ``(quant_min, quant_max)`` an observer uses.

    Without an override the range is the dtype's full range; ``reduce_range`` drops one bit of
    the 8-bit dtypes (uint8 -> [0, 127], int8 -> [-64, 63]), which fbgemm/x86 need for
    activations to avoid overflow in their 16-bit intermediate accumulation; wider dtypes ignore
    it, as torch.ao does. With an override both bounds must be given, lie inside the dtype, and
    satisfy ``quant_min <= quant_max``; ``reduce_range`` then halves them (floor division, as
    torch.ao does, whatever the dtype).
    """
    dtype = as_plain_dtype(dtype)
    lo, hi = dtype_bounds(dtype)
    if (quant_min is None) != (quant_max is None):
        raise ValueError("quant_min/quant_max: give both bounds or neither")
    if quant_min is not None and quant_max is not None:
        if quant_min > quant_max:
            raise ValueError(f"quant_min: {quant_min} is greater than quant_max {quant_max}")
        if quant_min < lo:
            raise ValueError(f"quant_min: {quant_min} is below the {dtype} minimum {lo}")
        if quant_max > hi:
            raise ValueError(f"quant_max: {quant_max} is above the {dtype} maximum {hi}")
        lo, hi = quant_min, quant_max
        if reduce_range:
            lo, hi = lo // 2, hi // 2
    elif reduce_range and dtype in (torch.uint8, torch.int8):
        lo, hi = lo // 2, hi // 2
    return lo, hi


def check_qparams(
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    quant_min: int,
    quant_max: int,
    axis: int | None = None,
    x: torch.Tensor | None = None,
) -> None:
    """Raise ``ValueError`` naming the first bad argument of a quantize/dequantize call."""
    if quant_min > quant_max:
        raise ValueError(f"quant_min: {quant_min} is greater than quant_max {quant_max}")
    s = torch.as_tensor(scale, dtype=torch.float64)
    if s.numel() == 0:
        raise ValueError("scale: empty")
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"scale: must be finite and > 0, got {s.flatten()[:8].tolist()}")
    z = torch.as_tensor(zero_point)
    if z.dtype == torch.bool or z.is_complex():
        raise ValueError(f"zero_point: expected an integer or float tensor, got {z.dtype}")
    if z.is_floating_point():
        # float zero points (per_channel_affine_float_qparams) may lie anywhere: z = -min / s
        if not bool(torch.isfinite(z).all()):
            raise ValueError("zero_point: must be finite")
    elif bool((z < quant_min).any()) or bool((z > quant_max).any()):
        raise ValueError(
            f"zero_point: {z.flatten()[:8].tolist()} outside [quant_min, quant_max] = "
            f"[{quant_min}, {quant_max}]"
        )
    if axis is None:
        if s.numel() != 1 or z.numel() != 1:
            raise ValueError(
                f"scale/zero_point: per-tensor quantization takes one value each, got "
                f"{s.numel()} and {z.numel()} (pass axis= for per-channel)"
            )
        return
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise ValueError(f"axis: expected an int, got {axis!r}")
    if x is not None:
        if x.dim() == 0:
            raise ValueError("x: per-channel quantization needs a tensor of rank >= 1")
        if not -x.dim() <= axis < x.dim():
            raise ValueError(f"axis: {axis} out of range for a tensor of rank {x.dim()}")
        channels = x.shape[axis]
        if s.numel() != channels or z.numel() != channels:
            raise ValueError(
                f"scale/zero_point: {s.numel()} scales and {z.numel()} zero points for "
                f"{channels} channels on axis {axis}"
            )


def _check_float_input(x: torch.Tensor, name: str = "x") -> None:
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")


# --------------------------------------------------------------------------------------------
# qparams
# --------------------------------------------------------------------------------------------


# How qparams are derived from a range; plain ints so TorchScript'd observers can carry them.
QPARAMS_AFFINE = 0
QPARAMS_SYMMETRIC = 1
QPARAMS_FLOAT = 2


def qparams_mode(qscheme: torch.qscheme) -> int:
    """The kernel mode (``QPARAMS_*``) for ``qscheme``; ``ValueError`` naming ``qscheme``."""
    if qscheme in SYMMETRIC_SCHEMES:
        return QPARAMS_SYMMETRIC
    if qscheme == torch.per_channel_affine_float_qparams:
        return QPARAMS_FLOAT
    if qscheme in (torch.per_tensor_affine, torch.per_channel_affine):
        return QPARAMS_AFFINE
    raise ValueError(f"qscheme: unsupported {qscheme}")


def symmetric_zero_point(
    dtype: torch.dtype, quant_min: int, quant_max: int, customized: bool
) -> int:
    """Zero point of symmetric quantization: 0 for signed dtypes, the middle code for unsigned.

    For uint8 that is 128 over the full range and ``(quant_min + quant_max) // 2`` over a custom
    one; uint16 uses ``2**15``, as torch.ao does.
    """
    dtype = as_plain_dtype(dtype)
    if dtype == torch.uint8:
        return (quant_min + quant_max) // 2 if customized else 128
    if dtype == torch.uint16:
        return 2**15
    return 0


def _range_over_steps(lo: torch.Tensor, hi: torch.Tensor, steps: int) -> torch.Tensor:
    """``(hi - lo) / steps`` in float32, as torch.ao computes it; where ``hi - lo`` overflows
    float32 (a finite range wider than ~3.4e38, e.g. +-3e38 mask values) the quotient is taken
    in double and saturated at the float32 maximum instead of becoming ``inf``."""
    scale = (hi - lo) / float(steps)
    overflow = torch.isinf(scale) & torch.isfinite(lo) & torch.isfinite(hi)
    if bool(overflow.any()):
        wide = (hi.to(torch.float64) - lo.to(torch.float64)) / float(steps)
        wide = torch.clamp(wide, max=3.4028234663852886e38).to(torch.float32)
        scale = torch.where(overflow, wide, scale)
    return scale


def choose_qparams_kernel(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    quant_min: int,
    quant_max: int,
    mode: int,
    sym_zero_point: int,
    eps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unchecked, TorchScript-able core of :func:`choose_qparams` (math documented there).

    ``mode`` is one of ``QPARAMS_*``; results live on ``min_val``'s device. ``min_val >
    max_val`` is not an error here: a moving average can cross them by a rounding error
    (``averaging_constant=1``: ``a + 1 * (v - a)`` lands 1 ULP from ``v``), and after widening
    to include 0 the range is valid, as in torch's fused observer kernel; float qparams of a
    crossed range take the ``s <= eps`` path (scale 1.0). :func:`choose_qparams` validates.
    """
    device = min_val.device
    if min_val.numel() == 0 or max_val.numel() == 0:
        return torch.ones([1], device=device), torch.zeros([1], dtype=torch.int64, device=device)
    if min_val.dim() == 0 and bool(min_val == float("inf")) and bool(max_val == float("-inf")):
        # never observed: the neutral qparams
        return torch.ones([1], device=device), torch.zeros([1], dtype=torch.int64, device=device)
    eps = eps.to(device=device, dtype=torch.float32)
    lo = torch.minimum(min_val, torch.zeros_like(min_val))
    hi = torch.maximum(max_val, torch.zeros_like(max_val))
    # literal modes: TorchScript cannot read module globals (1 = symmetric, 2 = float qparams)
    if mode == 1:
        bound = torch.maximum(-lo, hi)
        scale = torch.maximum(bound / (float(quant_max - quant_min) / 2), eps)
        zero_point = torch.full(lo.shape, sym_zero_point, dtype=torch.int64, device=device)
    elif mode == 2:
        scale = _range_over_steps(min_val, max_val, quant_max - quant_min)
        scale = torch.where(scale > eps, scale, torch.ones_like(scale))
        zero_point = -1 * min_val / scale
    else:
        scale = torch.maximum(_range_over_steps(lo, hi, quant_max - quant_min), eps)
        # int32, like torch.ao, so qparams compare equal dtype-for-dtype.
        zero_point = quant_min - torch.round(lo / scale).to(torch.int32)
        zero_point = torch.clamp(zero_point, quant_min, quant_max)
    if scale.dim() == 0:
        scale = scale.reshape([1])
    if zero_point.dim() == 0:
        zero_point = zero_point.reshape([1])
    return scale.to(torch.float32), zero_point


def choose_qparams(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    dtype: torch.dtype = torch.uint8,
    qscheme: torch.qscheme = torch.per_tensor_affine,
    quant_min: int | None = None,
    quant_max: int | None = None,
    reduce_range: bool = False,
    eps: float = DEFAULT_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point covering ``[min_val, max_val]`` (per tensor, or one per channel).

    The range is first widened to include 0 so that 0.0 is exactly representable
    (``lo = min(min_val, 0)``, ``hi = max(max_val, 0)``). Then, with ``R = quant_max - quant_min``:

    * affine: ``s = max((hi - lo) / R, eps)``, ``z = clamp(quant_min - round(lo / s), qmin, qmax)``
    * symmetric: ``s = max(max(-lo, hi) / (R / 2), eps)``; ``z`` from
      :func:`symmetric_zero_point` (0 signed, 128 for the full uint8 range)
    * float qparams (embeddings): ``s = (max - min) / R`` (1.0 where ``s <= eps``) and a float
      zero point ``z = -min / s``, without widening to 0.

    Returns ``scale`` as float32 (shape ``[1]`` per tensor, ``[C]`` per channel) and
    ``zero_point`` of the same shape: int32 for affine, int64 for symmetric, float32 for float
    qparams, exactly as torch.ao does.
    An empty or never-observed range (``min = +inf, max = -inf``) gives the neutral ``(1.0, 0)``;
    ``min_val > max_val`` anywhere else raises ``ValueError``.
    """
    dtype = as_plain_dtype(dtype)
    customized = quant_min is not None or quant_max is not None
    qmin, qmax = quant_range(dtype, quant_min, quant_max, reduce_range)
    mode = qparams_mode(qscheme)
    min_val = torch.as_tensor(min_val, dtype=torch.float32)
    max_val = torch.as_tensor(max_val, dtype=torch.float32)
    if min_val.shape != max_val.shape:
        raise ValueError(f"min_val/max_val: shapes differ, {min_val.shape} vs {max_val.shape}")
    if not eps > 0:
        raise ValueError(f"eps: must be > 0, got {eps}")
    if bool((min_val > max_val).any()) and not (
        min_val.dim() == 0 and bool(min_val == float("inf")) and bool(max_val == float("-inf"))
    ):
        raise ValueError("min_val: greater than max_val")
    return choose_qparams_kernel(
        min_val,
        max_val,
        qmin,
        qmax,
        mode,
        symmetric_zero_point(dtype, qmin, qmax, customized),
        torch.tensor([eps], dtype=torch.float32),
    )


def _check_group_size(x: torch.Tensor, group_size: int) -> None:
    if (
        not isinstance(group_size, int)
        or group_size <= 0
        or x.dim() == 0
        or x.shape[-1] % group_size != 0
    ):
        raise ValueError(
            f"group_size: {group_size!r} must be a positive int dividing the last dimension "
            f"{x.shape[-1] if x.dim() else 'of a scalar'}"
        )


def choose_qparams_per_group(
    x: torch.Tensor,
    group_size: int,
    dtype: torch.dtype = torch.int8,
    symmetric: bool = True,
    quant_min: int | None = None,
    quant_max: int | None = None,
    eps: float = DEFAULT_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qparams for every run of ``group_size`` consecutive elements of the last dimension.

    ``x`` of shape ``[..., K]`` with ``K % group_size == 0`` gives scale and zero point of shape
    ``[prod(...), K // group_size]``; each group is treated as its own per-tensor range.
    """
    _check_float_input(x)
    _check_group_size(x, group_size)
    groups = x.detach().reshape(-1, group_size).to(torch.float32)
    qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    scale, zp = choose_qparams(
        groups.amin(dim=1), groups.amax(dim=1), dtype, qscheme, quant_min, quant_max, False, eps
    )
    rows = x.reshape(-1, x.shape[-1]).shape[0]
    return scale.reshape(rows, -1), zp.reshape(rows, -1)


# --------------------------------------------------------------------------------------------
# kernel layer (no validation; TorchScript / export friendly; stable names, see module doc)
# --------------------------------------------------------------------------------------------


def _channel_view(t: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


def quantize_kernel(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    dtype: torch.dtype,
    axis: int | None = None,
) -> torch.Tensor:
    x = x.to(torch.float32)
    if axis is not None:
        a = axis % x.dim()
        scale = _channel_view(scale, a, x.dim())
        zero_point = _channel_view(zero_point, a, x.dim())
        inv_scale = 1.0 / scale.to(torch.float32)
    else:
        # per tensor, quantized_decomposed takes 1/s in double precision, then rounds it to
        # float32 for the multiply; doing the same keeps exported graphs and eager bit-identical
        inv_scale = (1.0 / scale.to(torch.float64)).to(torch.float32)
    if zero_point.is_floating_point():
        # float qparams: the zero point takes part in the rounding, round(x / s + z)
        q = torch.round(x * inv_scale + zero_point.to(torch.float32))
    else:
        # + z and the clamp in double: float32 rounds the int32 bound 2**31 - 1 up to 2**31,
        # which the cast then wraps to INT32_MIN; every code below 2**24 is the same either way
        q = torch.round(x * inv_scale).to(torch.float64) + zero_point.to(torch.float64)
    return torch.clamp(q, quant_min, quant_max).to(dtype)


def dequantize_kernel(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int | None = None,
) -> torch.Tensor:
    if axis is not None:
        a = axis % q.dim()
        scale = _channel_view(scale, a, q.dim())
        zero_point = _channel_view(zero_point, a, q.dim())
    return (q.to(torch.float32) - zero_point.to(torch.float32)) * scale.to(torch.float32)


def fake_quantize_kernel(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    axis: int | None = None,
) -> torch.Tensor:
    """Straight-through fake-quant: forward is dequantize(quantize(x)); the gradient passes
    through where ``x`` is inside the representable range and is zero where it is clamped.

    ``1/s`` is computed in float32 here, as torch's fake-quant kernels do (torch's
    ``fake_quantize_per_tensor_affine`` and the decomposed per-tensor quantize differ in this
    last bit; we follow each). The result has ``x``'s dtype: float16 / bfloat16 inputs are
    computed in float32 and rounded back once, as torch's kernels do, so a half-precision QAT
    model keeps feeding half precision to its next layer.
    """
    if axis is not None:
        a = axis % x.dim()
        scale = _channel_view(scale, a, x.dim())
        zero_point = _channel_view(zero_point, a, x.dim())
    s = scale.to(torch.float32)
    z = zero_point.to(torch.float32)
    out_dtype = x.dtype
    xd = x.detach()
    if out_dtype == torch.float16 or out_dtype == torch.bfloat16:
        xd = xd.to(torch.float32)
    if zero_point.is_floating_point():
        unclamped = torch.round(xd * (1.0 / s) + z)
    else:
        unclamped = torch.round(xd * (1.0 / s)) + z
    if zero_point.is_floating_point():
        # (q - z) is not an integer here: torch's kernel forms (q - z) * s in double and rounds
        # once to the output dtype; two roundings would differ in the last bit
        y = ((torch.clamp(unclamped, quant_min, quant_max).double() - z.double()) * s.double()).to(
            out_dtype
        )
    else:
        y = ((torch.clamp(unclamped, quant_min, quant_max) - z) * s).to(out_dtype)
    inside = (unclamped >= quant_min) & (unclamped <= quant_max)
    # The value is exactly y; the gradient is 1 where x was not clamped and 0 elsewhere
    # (x - x.detach() is 0 in value but carries d/dx = 1).
    return y + torch.where(inside, x - x.detach(), torch.zeros_like(y))


# --------------------------------------------------------------------------------------------
# public, validated API
# --------------------------------------------------------------------------------------------


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    dtype: torch.dtype,
    quant_min: int | None = None,
    quant_max: int | None = None,
    axis: int | None = None,
) -> torch.Tensor:
    """Affine quantization of float ``x`` to integer ``dtype``; per channel along ``axis``.

    ``q = clamp(round(x * (1 / s)) + z, quant_min, quant_max)``, with the bounds defaulting to
    the dtype's range. For float8 dtypes see :func:`quantize_float8`.
    """
    _check_float_input(x)
    dtype = as_plain_dtype(dtype)
    if dtype in FLOAT8_DTYPES:
        return quantize_float8(x, scale, dtype)
    qmin, qmax = quant_range(dtype, quant_min, quant_max)
    check_qparams(scale, zero_point, qmin, qmax, axis, x)
    if not isinstance(scale, torch.Tensor):
        scale = torch.tensor(scale, dtype=torch.float64)  # a Python float is a double
    return quantize_kernel(
        x,
        scale,
        torch.as_tensor(zero_point),
        qmin,
        qmax,
        storage_dtype(dtype),
        axis,
    )


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int = 0,
    axis: int | None = None,
) -> torch.Tensor:
    """``x' = (q - z) * s`` in float32; per channel along ``axis``. Float8 ``q`` ignores ``z``."""
    if q.dtype in FLOAT8_DTYPES:
        return dequantize_float8(q, scale)
    if q.dtype not in INTEGER_DTYPES:
        raise ValueError(
            f"q: expected an integer or float8 tensor of quantized codes, got {q.dtype}"
        )
    lo, hi = dtype_bounds(q.dtype)
    check_qparams(scale, zero_point, lo, hi, axis, q)
    return dequantize_kernel(q, torch.as_tensor(scale), torch.as_tensor(zero_point), axis)


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    quant_min: int,
    quant_max: int,
    axis: int | None = None,
) -> torch.Tensor:
    """``dequantize(quantize(x))`` in float, with a straight-through gradient inside the range."""
    _check_float_input(x)
    check_qparams(scale, zero_point, quant_min, quant_max, axis, x)
    return fake_quantize_kernel(
        x, torch.as_tensor(scale), torch.as_tensor(zero_point), quant_min, quant_max, axis
    )


def quantize_float8(
    x: torch.Tensor, scale: torch.Tensor | float, dtype: torch.dtype = torch.float8_e4m3fn
) -> torch.Tensor:
    """Scale-only float8: ``clamp(x / s, -fmax, fmax).to(dtype)``; saturates instead of inf.

    Note: torch's ``quantized_decomposed.quantize_per_tensor`` with a float8 ``dtype`` rounds
    ``x / s`` to an integer first (its integer formula); this is true float8 quantization.
    """
    _check_float_input(x)
    if dtype not in FLOAT8_DTYPES:
        raise ValueError(f"dtype: {dtype} is not a float8 dtype")
    s = torch.as_tensor(scale, dtype=torch.float32)
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"scale: must be finite and > 0, got {s.flatten()[:8].tolist()}")
    fmax = torch.finfo(dtype).max
    return torch.clamp(x.to(torch.float32) / s, -fmax, fmax).to(dtype)


def dequantize_float8(q: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``x' = q * s`` in float32."""
    if q.dtype not in FLOAT8_DTYPES:
        raise ValueError(f"q: expected a float8 tensor, got {q.dtype}")
    return q.to(torch.float32) * torch.as_tensor(scale, dtype=torch.float32)


def quantize_per_group(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
    dtype: torch.dtype = torch.int8,
    quant_min: int | None = None,
    quant_max: int | None = None,
) -> torch.Tensor:
    """Quantize each group of ``group_size`` elements of the last dimension with its own qparams
    (shapes as returned by :func:`choose_qparams_per_group`)."""
    _check_float_input(x)
    _check_group_size(x, group_size)
    dtype = as_plain_dtype(dtype)
    qmin, qmax = quant_range(dtype, quant_min, quant_max)
    groups = x.reshape(-1, group_size)
    check_qparams(scale.reshape(-1), zero_point.reshape(-1), qmin, qmax, 0, groups)
    q = quantize_kernel(groups, scale.reshape(-1), zero_point.reshape(-1), qmin, qmax, dtype, 0)
    return q.reshape(x.shape)


def dequantize_per_group(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, group_size: int
) -> torch.Tensor:
    """Inverse of :func:`quantize_per_group`."""
    _check_group_size(q, group_size)
    groups = q.reshape(-1, group_size)
    return dequantize_kernel(groups, scale.reshape(-1), zero_point.reshape(-1), 0).reshape(q.shape)
