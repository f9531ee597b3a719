"""How the ``int_mm`` engine drives ``torch._int_mm`` in eager mode, exactly, on this machine.

``torch._int_mm(A, B)`` (int8 x int8 -> int32) is exact on CPU in two of the three ways torch
computes it, and qbc's ``int_mm`` engine promises ``reference``'s numbers bit for bit, so this
module decides once per process how to get an exact product ``A @ W^T``:

``direct``
    ``torch._int_mm(A, W^T)`` as it is. Exact on an AVX512-VNNI CPU (oneDNN's int8 GEMM) and on
    an AVX2-only CPU (a scalar int32 loop), measured.
``split``
    ``W = 2 * W_hi + W_lo`` with ``W_hi = W >> 1`` in [-64, 63] and ``W_lo = W & 1`` in {0, 1};
    one ``torch._int_mm`` on the stacked ``[W_hi; W_lo]`` and ``2 * P_hi + P_lo``. Needed when
    oneDNN is capped below the CPU (``ONEDNN_MAX_CPU_ISA=AVX2`` on a VNNI CPU, as ISA-capped
    runs do): its AVX2 int8 GEMM shifts ``A`` to uint8 and adds pairs of u8 x s8 products in
    int16 with saturation (``vpmaddubsw``), so ``2 * 255 * 128`` overflows (measured: 2012 of
    2048 outputs wrong on random codes). With ``|W_hi| <= 64`` a pair is at most
    ``2 * 255 * 64 = 32640 < 2**15``: nothing saturates (measured exact). Twice the GEMM work.
``int64``
    ``torch.mm`` in int64, ``reference``'s own product: the last resort when neither of the
    above is exact here (never seen; slow).

The plan is chosen by :func:`plan`: a probe at first use runs each candidate on worst-case
operands (rows of ``A`` at -128 and 127, rows of ``W`` at -128 and 127, random rows) in the
shapes torch dispatches differently (M = 1, small, blocked) and compares with an int64 product.
Environment caps (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``) are read when torch starts,
so one probe per process is enough. ``qbc engines`` shows the plan.

Independently of the plan, ``K == 1`` never reaches ``torch._int_mm`` as ``W.t()``: that
transposed ``[1, N]`` view has strides ``(1, 1)``, which torch's CPU ``_int_mm`` misreads
(garbage on the VNNI CPU, measured for every M and N > 1); ``W.reshape(1, N)`` holds the same
values with row-major strides.

Graphs (TorchScript, trace, export) cannot probe the machine they will run on; they do not use
the plan (see :func:`harness.quant.engines.matmul_acc_int_mm`).

The second half of the module is what eager int_mm layers run (section comment below): the
weight-side terms once per weight, the per-call part in int32 on reused buffers, and a float64
requantization made of the same ops as ``reference``'s.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import threading

import torch

PLANS = ("direct", "split", "int64")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this process computes ``A @ W^T`` exactly, and why (for ``qbc engines``)."""

    kind: str  # one of PLANS
    reason: str

    def describe(self) -> str:
        return f"{self.kind}: {self.reason}"


def layout(w: torch.Tensor) -> torch.Tensor:
    """``w`` [N, K] contiguous as the [K, N] operand of ``torch._int_mm`` (no copy): its
    column-major transpose, or for K == 1 the row-major reshape (see module docstring)."""
    return w.reshape(1, -1) if w.shape[1] == 1 else w.t()


def split_weight(w: torch.Tensor) -> torch.Tensor:
    """``[W >> 1; W & 1]`` as one contiguous [2N, K] int8 tensor (``W = 2 * hi + lo``)."""
    return torch.cat([torch.bitwise_right_shift(w, 1), torch.bitwise_and(w, 1)])


def operand(kind: str, w: torch.Tensor) -> torch.Tensor:
    """The weight-side operand of ``kind`` for int8 contiguous ``w`` [N, K]: ``w`` itself, or
    for ``split`` the stacked halves [2N, K]. Computed once per weight (:func:`prepare`)."""
    if kind not in PLANS:
        raise ValueError(f"kind: {kind!r} is not one of {PLANS}")
    return split_weight(w) if kind == "split" else w


def multiply(
    kind: str, a: torch.Tensor, w_operand: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``a @ W^T`` as int32 [M, N] from ``a`` int8 [M, K] and ``operand(kind, W)`` (into
    ``out`` when given)."""
    if kind == "direct":
        return torch._int_mm(a, layout(w_operand), out=out)
    if kind == "split":
        n = w_operand.shape[0] // 2
        both = torch._int_mm(a, layout(w_operand))
        return torch.add(both[:, n:], both[:, :n], alpha=2, out=out)
    if kind == "int64":
        return torch.mm(a.to(torch.int64), w_operand.to(torch.int64).t()).to(torch.int32)
    raise ValueError(f"kind: {kind!r} is not one of {PLANS}")


def product(kind: str, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``a @ w^T`` exactly, as int32 [M, N], the way ``kind`` says (``a`` int8 [M, K], ``w``
    int8 contiguous [N, K])."""
    return multiply(kind, a, operand(kind, w))


def _probe_operands(m: int, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes that saturate any int16 pair sum: rows at both extremes, then random rows."""
    gen = torch.Generator().manual_seed(m * 1000003 + k * 1009 + n)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    a[0::3] = 127
    a[1::3] = -128
    w[0::3] = -128
    w[1::3] = 127
    return a, w


# (M, K, N): a matrix-vector product, a small GEMM, one large enough for blocked kernels; K
# covers 1 (the reshaped layout) and an odd size (tails).
PROBE_SHAPES = ((1, 64, 48), (7, 1, 5), (19, 77, 33), (96, 256, 80))


def is_exact(kind: str) -> bool:
    """True when ``product(kind, ...)`` equals the int64 product on every probe shape."""
    for m, k, n in PROBE_SHAPES:
        a, w = _probe_operands(m, k, n)
        exact = torch.mm(a.to(torch.int64), w.to(torch.int64).t())
        try:
            got = product(kind, a, w)
        except RuntimeError:  # e.g. a torch build whose _int_mm rejects a shape
            return False
        if not torch.equal(got.to(torch.int64), exact):
            return False
    return True


@functools.cache
def plan() -> Plan:
    """The plan of this process: the first of ``direct``, ``split`` that is exact here."""
    if not hasattr(torch, "_int_mm"):
        return Plan("int64", f"torch {torch.__version__} has no torch._int_mm")
    with torch.inference_mode():
        if is_exact("direct"):
            return Plan("direct", "torch._int_mm is exact here (probed on worst-case codes)")
        if is_exact("split"):
            return Plan(
                "split",
                "torch._int_mm saturates int16 pair sums here (a capped oneDNN, e.g. "
                "ONEDNN_MAX_CPU_ISA=AVX2): weights split in halves, two GEMMs in one",
            )
    return Plan("int64", "torch._int_mm is not exact here even on split weights: int64 mm")


# --------------------------------------------------------------------------------------------
# eager layers: weight-side terms once per weight, the per-call part in int32
# --------------------------------------------------------------------------------------------
#
# With ``a = q_x - 128`` (uint8 codes; ``a = q_x`` for int8) and ``c = 128 - z_x`` (``-z_x``):
#
#     acc[m, n] + e[n] = (A @ W^T)[m, n] - z_w[n] * sum_k a[m, k] + corr[n]
#     corr[n]          = c * (sum_k W[n, k] - z_w[n] * K) + e[n]
#
# ``sum_k W`` and ``z_w`` are the weight's (:class:`Weight`); ``e`` is what a layer folds in
# (the integer bias of a static layer). Every term is an integer, so int32 gives the exact value
# when no partial sum leaves int32 (:func:`accumulate` checks bounds and uses int64 otherwise);
# the requantization then consumes it exactly as ``reference`` consumes its int64 accumulator.

INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Weight:
    """The weight-side terms of one int8 weight [N, K], computed once (:func:`prepare`)."""

    kind: str  # the plan the operand is laid out for
    operand: torch.Tensor  # operand(kind, W)
    k: int
    col_sum: torch.Tensor  # int64 [N]: sum_k W[n, k]
    zw: torch.Tensor  # int64 [N]: the zero points, one per row
    zw_any: bool  # some z_w != 0: the row-sum term is needed
    dev_max: int  # max |W - z_w|: bounds the accumulator


def prepare(w: torch.Tensor, w_zp: torch.Tensor, kind: str | None = None) -> Weight:
    """:class:`Weight` of int8 ``w`` [N, K] with zero points ``w_zp`` ([N] or [1]), laid out for
    ``kind`` (default: this process's :func:`plan`)."""
    w = w.contiguous()
    n, k = w.shape
    kind = kind or plan().kind
    zw = w_zp.to(torch.int64).reshape(-1).expand(n).contiguous()
    dev = (w.to(torch.int64) - zw.reshape(-1, 1)).abs()
    return Weight(
        kind=kind,
        operand=operand(kind, w),
        k=k,
        col_sum=w.sum(dim=1, dtype=torch.int64),
        zw=zw,
        zw_any=bool(zw.any()),
        dev_max=int(dev.max()) if dev.numel() else 0,
    )


def shift(x_q: torch.Tensor, x_zp: int) -> tuple[torch.Tensor, int, int]:
    """``(a, c, d)``: int8 codes ``a`` with ``q_x - z_x = a + c``, and ``d = max |q_x - z_x|``
    over the codes' dtype. uint8 codes become ``q XOR 0x80`` read as int8 (= ``q - 128``)."""
    if x_q.dtype == torch.uint8:
        a = torch.bitwise_xor(x_q.view(torch.int8), -128)
        return a.contiguous(), 128 - x_zp, max(x_zp, 255 - x_zp)
    return x_q.contiguous(), -x_zp, max(x_zp + 128, 127 - x_zp)


@dataclasses.dataclass(frozen=True)
class Correction:
    """The per-channel term ``corr`` for one input zero point (and one ``e``), in the dtype the
    accumulator needs: int32 when no partial sum can leave int32, else int64."""

    corr: torch.Tensor  # [N]
    zw: torch.Tensor  # [N], the weight's zero points in the same dtype

    @property
    def dtype(self) -> torch.dtype:
        return self.corr.dtype


def correction(weight: Weight, c: int, d: int, extra: torch.Tensor | None = None) -> Correction:
    """:class:`Correction` for ``(c, d)`` of :func:`shift` and ``extra`` int64 [N] (or None)."""
    corr = c * (weight.col_sum - weight.zw * weight.k)
    if extra is not None:
        corr = corr + extra
    # |A @ W^T| <= K * 128 * 128 < 2**31 (K <= 131071, engines.INT_MM_MAX_K); after the row
    # term, |sum_k a (w - z_w)| <= K * 128 * dev_max; at the end |acc + e| <= K * d * dev_max
    # + max |e|; corr itself must fit too.
    k, dev = weight.k, weight.dev_max
    e_max = int(extra.abs().max()) if extra is not None and extra.numel() else 0
    corr_max = int(corr.abs().max()) if corr.numel() else 0
    wide = max(k * 128 * dev, k * d * dev + e_max, corr_max) > INT32_MAX
    dtype = torch.int64 if wide else torch.int32
    return Correction(corr.to(dtype), weight.zw.to(dtype))


def accumulate(
    weight: Weight, a: torch.Tensor, corr: Correction, reuse: bool = True
) -> torch.Tensor:
    """``acc[m, n] + extra[n]`` exactly (section comment) for ``a`` int8 [M, K] from
    :func:`shift`, as ``corr.dtype`` [M, N]. With ``reuse`` the result lives in this thread's
    :func:`scratch` (valid until the next call): pass False to keep several."""
    n = weight.zw.shape[0]
    out = scratch("product", torch.int32, (a.shape[0], n)) if reuse else None
    total = multiply(weight.kind, a, weight.operand, out)
    if corr.dtype != total.dtype:
        total = total.to(corr.dtype)
    if weight.zw_any:
        row = a.sum(dim=1, dtype=corr.dtype)
        total.sub_(torch.outer(row, corr.zw))
    return total.add_(corr.corr)


def multiplier(x_scale: torch.Tensor, w_scale: torch.Tensor, y_scale: torch.Tensor) -> torch.Tensor:
    """``s_x * s_w / s_y`` per output channel ([N] or [1]), the expression and float64
    precision of :func:`harness.quant.engines.requantize`, so the same values."""
    sw = w_scale.to(torch.float64).reshape(-1)
    sx = x_scale.to(torch.float64).reshape(-1)[0]
    return (sx * sw) / y_scale.to(torch.float64).reshape(-1)[0]


def requantize(
    total: torch.Tensor,
    mult: torch.Tensor,
    y_zp: int,
    quant_min: int,
    quant_max: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``clamp(round(total * mult) + z_y, qmin, qmax)`` with the channel on the last dim.

    :func:`harness.quant.engines.requantize` computes ``round(float64(acc + b_q) * mult)``
    where ``acc + b_q`` is an exact integer below 2**53. Here ``total`` holds that same integer
    in int32 (or int64); ``torch.mul`` with a float64 ``mult`` converts it to float64 exactly and
    rounds the product once, so the product is the same float64 value, and the remaining ops
    (round half to even, add ``z_y``, clamp, cast) are the same ops in the same order."""
    q = torch.mul(total, mult, out=scratch("float64", torch.float64, total.shape))
    q.round_()
    q.add_(float(y_zp))
    q.clamp_(quant_min, quant_max)
    # integral values in [qmin, qmax]: through int32, which casts ~3x faster than float64 ->
    # uint8 straight (measured), with the same values
    return scratch("codes", torch.int32, q.shape).copy_(q).to(dtype)


def dequantize(
    total: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``float32(acc * (s_x * s_w) + b)`` with the channel on the last dim: the float64 ops of
    :func:`harness.quant.engines.dequantize_acc` on the exact integer ``total``."""
    sw = w_scale.to(torch.float64).reshape(-1)
    sx = x_scale.to(torch.float64).reshape(-1)[0]
    y = torch.mul(total, sx * sw, out=scratch("float64", torch.float64, total.shape))
    if bias is not None:
        y.add_(bias.to(torch.float64).reshape(-1))
    return y.to(torch.float32)


_workspace = threading.local()


def scratch(slot: str, dtype: torch.dtype, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """A buffer of ``shape`` kept by this thread under ``slot`` and reused by the next call:
    for intermediates only, never for a layer's output. glibc serves multi-MB allocations by
    ``mmap`` and returns them on free, so a fresh buffer page-faults on first touch on every
    call (measured: a [3136, 64] float64 product took 1-2 ms instead of 0.07 ms)."""
    buffers = _workspace.__dict__.setdefault("buffers", {})
    numel = math.prod(shape)
    buf = buffers.get(slot)
    if buf is None or buf.dtype != dtype or buf.numel() < numel:
        with torch.inference_mode(False):  # usable both inside and outside inference mode
            buf = buffers[slot] = torch.empty(numel, dtype=dtype)
    return buf[:numel].view(shape)


def conv_weight_rows(w: torch.Tensor) -> torch.Tensor:
    """Conv weight [O, C/g, *k] as rows [O, prod(k) * C/g] in the column order of
    :func:`patches` (kernel taps outer, channels inner)."""
    return w.movedim(1, -1).reshape(w.shape[0], -1).contiguous()


def pad_channels_last(x: torch.Tensor, padding: list[int], value: int) -> torch.Tensor:
    """``x`` [B, C, *S] as [B, *S_padded, C], padded with ``value`` (a view when unpadded)."""
    x = x.movedim(1, -1)
    if not any(padding):
        return x
    b, *spatial, c = x.shape
    shape = (b, *(s + 2 * p for s, p in zip(spatial, padding, strict=True)), c)
    out = scratch("padded", x.dtype, shape).fill_(value)
    inside = tuple(slice(p, p + s) for s, p in zip(spatial, padding, strict=True))
    out[(slice(None), *inside)] = x
    return out


def patches(
    xp: torch.Tensor, kernel: list[int], stride: list[int], dilation: list[int]
) -> tuple[torch.Tensor, list[int]]:
    """im2col of a padded channels-last ``xp`` [B, *S, C]: [B * L, prod(kernel) * C] and the
    output spatial shape. One strided copy per kernel tap, each moving whole channel rows (the
    unfold + permute of :func:`harness.quant.engines.im2col` gathers single bytes, ~50x slower
    on a 64-channel 56x56 input, measured)."""
    b, *spatial, c = xp.shape
    out = [
        (s - d * (k - 1) - 1) // st + 1
        for s, k, st, d in zip(spatial, kernel, stride, dilation, strict=True)
    ]
    cols = scratch("patches", xp.dtype, (b, *out, math.prod(kernel), c))
    for tap, offsets in enumerate(itertools.product(*(range(k) for k in kernel))):
        window = tuple(
            slice(o * d, o * d + (n - 1) * st + 1, st)
            for o, d, n, st in zip(offsets, dilation, out, stride, strict=True)
        )
        cols[(slice(None), *(slice(None) for _ in out), tap)] = xp[(slice(None), *window)]
    return cols.reshape(b * math.prod(out), -1), out
