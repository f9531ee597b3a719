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
this module (see :func:`harness.quant.engines.matmul_acc_int_mm`).
"""

from __future__ import annotations

import dataclasses
import functools

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


def product(kind: str, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``a @ w^T`` exactly, as int32 [M, N], the way ``kind`` says (``a`` int8 [M, K], ``w``
    int8 contiguous [N, K])."""
    if kind == "direct":
        return torch._int_mm(a, layout(w))
    if kind == "split":
        n = w.shape[0]
        both = torch._int_mm(a, layout(split_weight(w)))
        return torch.add(both[:, n:], both[:, :n], alpha=2)
    if kind == "int64":
        return torch.mm(a.to(torch.int64), w.to(torch.int64).t()).to(torch.int32)
    raise ValueError(f"kind: {kind!r} is not one of {PLANS}")


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
