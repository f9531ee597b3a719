"""Engines: the kernel backends that compute qbc's quantized modules.

A quantized module holds plain integer tensors and explicit qparams; *how* it computes is the
engine's business. The engine is chosen per module (``module.engine = "int_mm"`` or
``module.set_engine("int_mm")``) or, for modules whose ``engine`` is ``""``, by the innermost
``with use_engine(name):`` block (default ``"reference"``).

Engines
-------
``reference``
    The specification. For a linear layer with input codes ``q_x`` (scale ``s_x``, zero point
    ``z_x``), weight codes ``q_w`` (``s_w``, ``z_w``, per tensor or per output channel ``n``) and
    float bias ``b``::

        acc[m, n] = sum_k (q_x[m, k] - z_x) * (q_w[n, k] - z_w[n])      exact, in int64
        b_q[n]    = round(b[n] / (s_x * s_w[n]))                          integer bias
        q_y[m, n] = clamp(round((acc[m, n] + b_q[n]) * (s_x * s_w[n] / s_y)) + z_y, qmin, qmax)

    ``round`` is round-half-to-even; the requantization multiply is done in float64 on the
    float32 scales, so it is deterministic on every platform (elementwise IEEE arithmetic, no
    reduction order involved). ``(qmin, qmax)`` is the full range of the output dtype, as in
    torch's quantized kernels. Convolutions are the same formula over im2col patches; padding
    contributes ``q_x = z_x`` (a real 0).
``int_mm``
    The same numbers, bit for bit, through ``torch._int_mm`` (int8 x int8 -> int32). uint8
    activations are shifted to int8 (``a = q_x - 128``, i.e. ``q_x XOR 0x80``), and with
    ``c = 128 - z_x`` (or ``c = -z_x`` for int8 activations, which need no shift)::

        acc = sum_k (a + c)(q_w - z_w)
            = (A @ Q_w^T) - z_w[n] * sum_k a[m, k] + c * sum_k q_w[n, k] - c * z_w[n] * K

    The product ``A @ Q_w^T`` is exact in int32 while ``K * 128 * 128 < 2**31`` (K <= 131071);
    the corrections are added in float64 on exact integers. The accumulator is then requantized
    by the same code as ``reference``, so the outputs are identical.

    ``torch._int_mm`` itself is not exact everywhere: with ``K == 1`` and the weight passed as
    its transpose it returns garbage (seen on AVX512-VNNI), and under a capped oneDNN
    (``ONEDNN_MAX_CPU_ISA=AVX2`` on a VNNI CPU) its int16 pair sums saturate. Eager calls go
    through :mod:`harness.quant.int_mm`, which lays ``K == 1`` out row-major and picks, by a
    probe at first use, the direct GEMM or an exact fallback (weights split into halves that
    cannot saturate); ``qbc engines`` names the choice. Scripted, traced and exported modules
    always take the split form (:func:`split_product`, since qbc 0.2.0): a graph runs wherever
    its file goes and cannot carry a plan probed where it was written.

    Eager modules do not run the kernels below: they keep the weight-side terms (column sums,
    zero points, the laid-out GEMM operand) per weight, the bias / multiplier terms per input
    scale, add the corrections to the int32 product in place, and requantize with the same
    float64 ops as :func:`requantize` (:mod:`harness.quant.int_mm` says why the numbers are
    the same; the hypothesis tests in ``tests/quant/test_int_mm.py`` check it). Convolutions
    build their patches channels-last from the shifted int8 input. The kernels below stay the
    specification and the graph form.
``fbgemm``, ``x86``, ``qnnpack``, ``onednn``
    torch's own quantized CPU kernels (``torch.ops.quantized.*``) with
    ``torch.backends.quantized.engine`` set. Our plain integers become torch quantized tensors
    only at this edge, inside :func:`harness.compat.expected_torch_deprecations`. They round
    their own way (float bias, float requantization, qnnpack's fixed-point multiplier), so they
    agree with ``reference`` to within one output quantization step, not bit for bit, *provided
    the activations use their qconfig's reduced range* (uint8 codes <= 127): on AVX2 CPUs
    fbgemm, x86 and onednn add pairs of u8*s8 products in int16 (``vpmaddubsw``), which
    saturates on full-range inputs (measured: up to 35 output steps off). They run
    eagerly only: TorchScript / trace / export of a module use ``reference`` or ``int_mm``. When
    this torch lacks them, :func:`get_engine` raises :class:`EngineUnavailable`.

The ``reference`` / ``int_mm`` kernels below are plain tensor code, valid under
``torch.jit.script``, ``torch.jit.trace`` and ``torch.export``, with no data-dependent control
flow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from harness import compat
from harness.quant import int_mm

INTEGER_ENGINES = ("reference", "int_mm")
NATIVE_ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")
ENGINE_NAMES = INTEGER_ENGINES + NATIVE_ENGINES
DEFAULT_ENGINE = "reference"

# Largest K for which the int32 product of torch._int_mm cannot overflow: |a|, |w| <= 128.
INT_MM_MAX_K = (2**31 - 1) // (128 * 128)


class EngineUnavailable(compat.FeatureUnavailable):
    """An engine this torch release cannot run; the message names the engine and the release."""

    def __init__(self, engine: str, reason: str) -> None:
        super().__init__(f"qbc engine {engine!r}", reason)
        self.engine = engine
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Engine:
    """One registry entry: a name, what computes, and whether this torch can run it."""

    name: str
    kind: str  # "integer" (ours, exact) or "native" (torch's quantized kernels)
    description: str

    def unavailable_reason(self) -> str | None:
        """``None`` when usable here, else why not (in words, for ``qbc engines``)."""
        if self.name == "int_mm" and not hasattr(torch, "_int_mm"):
            return f"torch {compat.torch_release()} has no torch._int_mm"
        if self.kind == "native":
            if not compat.has_quantized_engines():
                return f"torch {compat.torch_release()} ships no quantized CPU kernels"
            supported = list(torch.backends.quantized.supported_engines)
            if self.name not in supported:
                return (
                    f"torch {compat.torch_release()} was built without it "
                    f"(quantized engines: {supported})"
                )
        return None

    @property
    def available(self) -> bool:
        return self.unavailable_reason() is None


ENGINES: dict[str, Engine] = {
    "reference": Engine(
        "reference", "integer", "exact int64 accumulation, float64 requantization (the spec)"
    ),
    "int_mm": Engine(
        "int_mm", "integer", "torch._int_mm int8 GEMM, zero-point corrections; == reference"
    ),
    "fbgemm": Engine("fbgemm", "native", "torch.ops.quantized with the fbgemm backend"),
    "x86": Engine("x86", "native", "torch.ops.quantized with the x86 backend (fbgemm+onednn)"),
    "qnnpack": Engine("qnnpack", "native", "torch.ops.quantized with the qnnpack backend"),
    "onednn": Engine("onednn", "native", "torch.ops.quantized with the onednn backend"),
}


def get_engine(name: str) -> Engine:
    """The engine called ``name``.

    Unknown names raise ``ValueError`` naming ``engine``; known engines this torch cannot run
    raise :class:`EngineUnavailable` naming the engine and the torch release.
    """
    if name not in ENGINES:
        raise ValueError(f"engine: {name!r} is not one of {list(ENGINES)}")
    engine = ENGINES[name]
    reason = engine.unavailable_reason()
    if reason is not None:
        raise EngineUnavailable(name, reason)
    return engine


def available_engines() -> tuple[str, ...]:
    """Names of the engines usable with this torch, in registry order."""
    return tuple(name for name, e in ENGINES.items() if e.available)


def engine_detail(name: str) -> str:
    """How an available engine computes on this machine, when that is decided here: for
    ``int_mm``, the plan its probe chose (:func:`harness.quant.int_mm.plan`); else ``""``."""
    if name == "int_mm" and ENGINES[name].available:
        return int_mm.plan().describe()
    return ""


def engine_rows() -> list[dict[str, Any]]:
    """One row per engine for ``qbc engines``: name, kind, available, reason, description,
    detail (:func:`engine_detail`)."""
    rows = []
    for name, e in ENGINES.items():
        reason = e.unavailable_reason()
        rows.append(
            {
                "name": name,
                "kind": e.kind,
                "available": reason is None,
                "reason": reason or "",
                "description": e.description,
                "detail": engine_detail(name) if reason is None else "",
            }
        )
    return rows


_state = threading.local()


def current_engine() -> str:
    """The engine selected by the innermost :func:`use_engine` of this thread (or the default)."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else DEFAULT_ENGINE


@contextlib.contextmanager
def use_engine(name: str) -> Iterator[Engine]:
    """Compute every module whose ``engine`` is ``""`` with ``name`` inside the block."""
    engine = get_engine(name)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield engine
    finally:
        stack.pop()


def resolve_engine(module_engine: str) -> str:
    """The engine a module computes with: its own if set, else the context's."""
    return module_engine if module_engine else current_engine()


# --------------------------------------------------------------------------------------------
# integer kernels (reference and int_mm): TorchScript- and export-friendly
# --------------------------------------------------------------------------------------------


def matmul_acc_reference(
    x_q: torch.Tensor, x_zp: torch.Tensor, w_q: torch.Tensor, w_zp: torch.Tensor
) -> torch.Tensor:
    """``acc[m, n] = sum_k (x_q[m, k] - x_zp) * (w_q[n, k] - w_zp[n])`` in int64.

    ``x_q``: [M, K] integer codes; ``x_zp``: one zero point; ``w_q``: [N, K] int8 codes;
    ``w_zp``: [N] or [1] zero points.
    """
    x = x_q.to(torch.int64) - x_zp.to(torch.int64).reshape(1, 1)
    w = w_q.to(torch.int64) - w_zp.to(torch.int64).reshape(-1, 1)
    return torch.mm(x, w.t())


def matmul_acc_int_mm(
    x_q: torch.Tensor, x_zp: torch.Tensor, w_q: torch.Tensor, w_zp: torch.Tensor
) -> torch.Tensor:
    """The same ``acc`` as :func:`matmul_acc_reference` through ``torch._int_mm``, returned as
    float64 holding exact integers (what :func:`requantize` consumes; |acc| << 2**53).

    ``w_q`` must be int8 and contiguous [N, K]: its transpose is then the column-major [K, N]
    operand ``torch._int_mm`` reads fastest, with no copy. The zero-point corrections are one
    row vector and one rank-1 update, applied in place on the float64 product (profiling showed
    the int64 version of this epilogue costing ~5x the requantization).
    """
    k = x_q.shape[1]
    if not torch.jit.is_tracing() and k > 131071:  # INT_MM_MAX_K (a literal for TorchScript)
        raise ValueError(f"x_q: K={k} exceeds 131071, where the int32 product could overflow")
    if x_q.dtype == torch.uint8:
        # q - 128 in int8: the cast wraps (two's complement), flipping the top bit shifts
        a = torch.bitwise_xor(x_q.to(torch.int8), -128)
        c = 128.0 - x_zp.to(torch.float64).reshape(1, 1)
    else:
        a = x_q.to(torch.int8)
        c = -x_zp.to(torch.float64).reshape(1, 1)
    zw = w_zp.to(torch.float64).reshape(1, -1)
    if torch.jit.is_scripting():
        total = split_product(a, w_q, k == 1).to(torch.float64)
    elif not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
        total = int_mm.product(int_mm.plan().kind, a, w_q).to(torch.float64)
    else:
        total = split_product(a, w_q, _is_one(k)).to(torch.float64)
    col_w = w_q.sum(dim=1, dtype=torch.int64).to(torch.float64).reshape(1, -1)
    total.add_(c * (col_w - zw * k))
    row_a = a.sum(dim=1, dtype=torch.int64).to(torch.float64).reshape(-1, 1)
    total.addcmul_(row_a, zw, value=-1.0)
    return total


def split_product(a: torch.Tensor, w_q: torch.Tensor, k_is_one: bool) -> torch.Tensor:
    """``a @ w_q^T`` in int32, exact on every CPU: the graph form of the int_mm engine.

    A scripted, traced or exported module runs wherever its file goes, so it cannot use a plan
    probed on the machine that wrote it (:mod:`harness.quant.int_mm`); it always takes the
    ``split`` plan, exact even where ``torch._int_mm`` saturates int16 pair sums (a capped
    oneDNN): ``W = 2 * (W >> 1) + (W & 1)``, both halves in one GEMM on the stacked [2N, K]
    weight. ``K == 1`` is laid out row-major (``W^T`` of a [N, 1] weight is misread).
    """
    n = w_q.shape[0]
    halves = torch.cat([torch.bitwise_right_shift(w_q, 1), torch.bitwise_and(w_q, 1)])
    operand = halves.reshape(1, -1) if k_is_one else halves.t()
    both = torch._int_mm(a, operand)
    return torch.add(both[:, n:], both[:, :n], alpha=2)


def _is_one(k: Any) -> bool:
    """``k == 1`` for a size that the tracer hands out as a tensor (and warns when it becomes a
    bool: a weight's K is fixed for the traced module, so the trace may keep the branch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return bool(k == 1)


def matmul_acc(
    engine: str, x_q: torch.Tensor, x_zp: torch.Tensor, w_q: torch.Tensor, w_zp: torch.Tensor
) -> torch.Tensor:
    """Accumulator of ``x @ w^T`` with zero points removed, by ``engine``: exact integers in
    float64 (identical values for both engines)."""
    if engine == "int_mm":
        return matmul_acc_int_mm(x_q, x_zp, w_q, w_zp)
    return matmul_acc_reference(x_q, x_zp, w_q, w_zp).to(torch.float64)


def im2col(
    x: torch.Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    pad_value: torch.Tensor,
) -> tuple[torch.Tensor, list[int]]:
    """Patches of an N-d input ``x`` [B, C, *S] as [B, L, C * prod(kernel)], plus the output
    spatial shape. Works on any dtype (integer codes included); padding uses ``pad_value`` (a
    one-element tensor, so an exported graph keeps it as data, not as a baked constant).

    Column order is (channel, k_1, ..., k_n), the order of ``weight.reshape(O, -1)``.
    """
    nd = len(kernel_size)
    pads: list[int] = []
    for d in range(nd - 1, -1, -1):  # F.pad lists the last dimension first
        pads.append(padding[d])
        pads.append(padding[d])
    padded = False
    for p in padding:
        if p > 0:
            padded = True
    if padded:
        # pad with 0, then put pad_value where the mask of real positions is 0
        inside = F.pad(torch.ones_like(x[:1, :1], dtype=torch.bool), pads, value=False)
        x = torch.where(inside, F.pad(x, pads, value=0.0), pad_value.reshape(-1)[0].to(x.dtype))
    out_shape: list[int] = []
    for d in range(nd):
        eff = dilation[d] * (kernel_size[d] - 1) + 1
        x = x.unfold(2 + d, eff, stride[d])
        # keep every dilation-th tap of the window: [..., eff] -> [..., k]
        x = x.unfold(x.dim() - 1, 1, dilation[d]).squeeze(-1)
        out_shape.append(x.shape[2 + d])
    b = x.shape[0]
    c = x.shape[1]
    # [B, C, o_1..o_n, k_1..k_n] -> [B, o_1..o_n, C, k_1..k_n]
    perm = [0]
    for d in range(nd):
        perm.append(2 + d)
    perm.append(1)
    for d in range(nd):
        perm.append(2 + nd + d)
    cols = x.permute(perm)
    k_total = c
    for k in kernel_size:
        k_total = k_total * k
    return cols.reshape(b, -1, k_total), out_shape


def conv_acc(
    engine: str,
    x_q: torch.Tensor,
    x_zp: torch.Tensor,
    w_q: torch.Tensor,
    w_zp: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """Accumulator of an N-d convolution, [B, O, *out], by ``engine`` (exact, in float64).

    ``x_q`` [B, C, *S] codes, ``w_q`` [O, C / groups, *k] int8 codes, zero points as in
    :func:`matmul_acc`. Padding is filled with ``x_zp`` (real 0), then each group's im2col
    patches go through :func:`matmul_acc`.
    """
    kernel_size = list(w_q.shape[2:])
    b = x_q.shape[0]
    c = x_q.shape[1]
    o = w_q.shape[0]
    cg = c // groups
    og = o // groups
    accs: list[torch.Tensor] = []
    out_shape: list[int] = []
    zw = w_zp.reshape(-1).expand(o)  # per-tensor or per-channel alike: one value per channel
    for g in range(groups):
        xg = x_q[:, g * cg : (g + 1) * cg]
        cols, out_shape = im2col(xg, kernel_size, stride, padding, dilation, x_zp)
        wg = w_q[g * og : (g + 1) * og].reshape(og, -1)
        zwg = zw[g * og : (g + 1) * og]
        acc = matmul_acc(engine, cols.reshape(-1, cols.shape[-1]), x_zp, wg.contiguous(), zwg)
        accs.append(acc.reshape(b, -1, og))
    acc = torch.cat(accs, dim=2) if groups > 1 else accs[0]
    # [B, L, O] -> [B, O, *out]
    shape = [b]
    shape.extend(out_shape)
    shape.append(o)
    acc = acc.reshape(shape)
    perm = [0, len(shape) - 1]
    for d in range(len(out_shape)):
        perm.append(1 + d)
    return acc.permute(perm).contiguous()


def integer_bias(bias: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """``b_q = round(b / (s_x * s_w))`` as an int64 tensor (float64 arithmetic)."""
    denom = x_scale.to(torch.float64).reshape(1) * w_scale.to(torch.float64).reshape(-1)
    return torch.round(bias.to(torch.float64) / denom).to(torch.int64)


def requantize(
    acc: torch.Tensor,
    bias: torch.Tensor | None,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    y_scale: torch.Tensor,
    y_zp: torch.Tensor,
    quant_min: int,
    quant_max: int,
    dtype: torch.dtype,
    channel_dim: int,
) -> torch.Tensor:
    """``q_y = clamp(round((acc + b_q) * (s_x * s_w / s_y)) + z_y, quant_min, quant_max)``.

    ``acc`` is the exact integer accumulator with the output channel on ``channel_dim``;
    per-channel ``w_scale`` broadcasts along it. Float64 throughout: every integer involved is
    far below 2**53, so only the final multiply rounds.
    """
    shape = [1] * acc.dim()
    shape[channel_dim] = -1
    sw = w_scale.to(torch.float64).reshape(shape)
    sx = x_scale.to(torch.float64).reshape(-1)[0]
    mult = (sx * sw) / y_scale.to(torch.float64).reshape(-1)[0]
    total = acc.to(torch.float64)
    if bias is not None:
        total = total + integer_bias(bias, x_scale, w_scale).to(torch.float64).reshape(shape)
    # q is a fresh tensor: finish in place (one allocation instead of four)
    q = torch.round(total * mult)
    q.add_(y_zp.to(torch.float64).reshape(-1)[0])
    q.clamp_(quant_min, quant_max)
    return q.to(dtype)


def dequantize_acc(
    acc: torch.Tensor,
    bias: torch.Tensor | None,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    channel_dim: int,
) -> torch.Tensor:
    """Float output of a dynamic layer: ``y = acc * (s_x * s_w) + b`` (float64, then float32)."""
    shape = [1] * acc.dim()
    shape[channel_dim] = -1
    sw = w_scale.to(torch.float64).reshape(shape)
    sx = x_scale.to(torch.float64).reshape(-1)[0]
    y = acc.to(torch.float64) * (sx * sw)
    if bias is not None:
        y = y + bias.to(torch.float64).reshape(shape)
    return y.to(torch.float32)


# --------------------------------------------------------------------------------------------
# native engines: torch's quantized kernels, eager only
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def native_backend(name: str) -> Iterator[None]:
    """Select torch's quantized backend ``name`` for the block (restored afterwards), with
    torch's deprecation warnings for quantized tensors expected."""
    get_engine(name)
    with compat.expected_torch_deprecations():
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = name
        try:
            yield
        finally:
            torch.backends.quantized.engine = previous


def to_torch_qtensor(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> Any:
    """Plain per-tensor codes -> a torch quantized tensor (quint8 / qint8) sharing the values."""
    return torch._make_per_tensor_quantized_tensor(
        q, float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0])
    )


def to_torch_qweight(w_q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> Any:
    """Plain int8 weight codes (per tensor, or per channel on axis 0) -> torch qint8 tensor."""
    if scale.numel() == 1:
        return to_torch_qtensor(w_q, scale, zero_point)
    return torch._make_per_channel_quantized_tensor(
        w_q, scale.to(torch.float64), zero_point.to(torch.int64), 0
    )


def from_torch_qtensor(qt: Any) -> torch.Tensor:
    """Codes of a torch quantized tensor as a plain integer tensor."""
    return qt.int_repr()
