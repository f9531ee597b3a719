"""Kernel benchmark: qbc's quantized Linear / Conv2d per engine against float32 torch.nn.

Run: ``python bench/kernels.py`` (``--quick`` for fewer repeats). Everything is measured in one
run: each timing is the median of repeated calls after a warm-up. ``speedup`` is
``fp32 time / engine time`` (> 1: faster than float32). The int_mm breakdown separates the raw
``torch._int_mm`` GEMM from qbc's zero-point corrections and float64 requantization, so a miss
of the target (int_mm >= 3x fp32 and within 1.2x of fbgemm) can be attributed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from harness import compat
from harness.quant import engines as E
from harness.quant import nn as qnn

LINEAR = (256, 1024, 1024)  # M, K, N
CONV = (1, 64, 64, 56, 3)  # batch, C_in, C_out, H = W, kernel (padding 1)


def median_time(fn: Callable[[], object], budget_s: float, max_repeats: int) -> float:
    """Median wall time of ``fn`` in seconds: one warm-up call, then repeats within a budget."""
    fn()
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    repeats = max(3, min(max_repeats, int(budget_s / max(first, 1e-6))))
    times = [first]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return " ".join(w for w in wanted if w in flags) or "none of " + ",".join(wanted)


def build_linear() -> tuple[torch.nn.Module, qnn.Linear, tuple[torch.Tensor, ...], torch.Tensor]:
    m, k, n = LINEAR
    fl = torch.nn.Linear(k, n)
    x = torch.randn(m, k)
    ql = qnn.Linear(k, n)
    w_scale = fl.weight.detach().abs().amax(dim=1) / 127
    w_q = torch.clamp(torch.round(fl.weight.detach() / w_scale[:, None]), -127, 127)
    ql.set_weight_bias(w_q.to(torch.int8), w_scale, torch.zeros(n, dtype=torch.int64), fl.bias)
    ql.set_output_qparams(0.05, 128)
    # activations over [0, 127] (reduce_range), so fbgemm/x86's 16-bit pair sums cannot saturate
    qx = qnn.Quantize(float(x.abs().max()) / 63, 64)(x)
    return fl, ql, qx, x


def build_conv() -> tuple[torch.nn.Module, qnn.Conv2d, tuple[torch.Tensor, ...], torch.Tensor]:
    b, cin, cout, hw, k = CONV
    fc = torch.nn.Conv2d(cin, cout, k, padding=k // 2)
    x = torch.randn(b, cin, hw, hw)
    qc = qnn.Conv2d(cin, cout, k, padding=k // 2)
    w = fc.weight.detach()
    w_scale = w.abs().amax(dim=(1, 2, 3)) / 127
    w_q = torch.clamp(torch.round(w / w_scale[:, None, None, None]), -127, 127).to(torch.int8)
    qc.set_weight_bias(w_q, w_scale, torch.zeros(cout, dtype=torch.int64), fc.bias)
    qc.set_output_qparams(0.05, 128)
    qx = qnn.Quantize(float(x.abs().max()) / 63, 64)(x)
    return fc, qc, qx, x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller time budget per timing")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared, loaded machine OpenMP barriers "
        "make every multi-threaded elementwise op cost tens of ms)",
    )
    parser.add_argument(
        "--engines", default=",".join(E.ENGINE_NAMES), help="comma-separated engines to time"
    )
    args = parser.parse_args(argv)
    budget, max_rep = (0.5, 10) if args.quick else (2.0, 30)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}, cpu flags: {cpu_flags()}, "
        f"{platform.processor() or platform.machine()}"
    )
    results: dict[str, dict[str, float]] = {"linear": {}, "conv2d": {}}
    with torch.no_grad():
        for kind, build in (("linear", build_linear), ("conv2d", build_conv)):
            fmod, qmod, qx, x = build()
            results[kind]["fp32"] = median_time(lambda f=fmod, x=x: f(x), budget, max_rep)
            for engine in args.engines.split(","):
                reason = E.ENGINES[engine].unavailable_reason()
                if reason:
                    print(f"  {kind}/{engine}: unavailable ({reason})")
                    continue
                qmod.set_engine(engine)
                with compat.expected_torch_deprecations():
                    # the reference engine's int64 GEMM is slow: fewer repeats suffice
                    b = budget / 4 if engine == "reference" else budget
                    results[kind][engine] = median_time(lambda q=qmod, a=qx: q(*a), b, max_rep)
        # where int_mm's time goes (Linear): the raw GEMM, and the module with the GEMM
        # replaced by its precomputed result (= shift, zero-point corrections, requantization)
        fmod, qmod, qx, _ = build_linear()
        qmod.set_engine("int_mm")
        a = torch.bitwise_xor(qx[0].to(torch.int8), -128)
        raw = median_time(lambda: torch._int_mm(a, qmod.weight.t()), budget, max_rep)
        product = torch._int_mm(a, qmod.weight.t())
        real_int_mm = torch._int_mm
        torch._int_mm = lambda *_: product  # type: ignore[assignment]
        try:
            epilogue = median_time(lambda: qmod(*qx), budget, max_rep)
        finally:
            torch._int_mm = real_int_mm
        x32, w32 = a.float(), qmod.weight.float()
        sgemm = median_time(lambda: torch.mm(x32, w32.t()), budget, max_rep)

    m, k, n = LINEAR
    b_, cin, cout, hw, ks = CONV
    print(f"\nLinear M={m} K={k} N={n};  Conv2d {b_}x{cin}x{hw}x{hw} -> {cout}, {ks}x{ks} pad 1")
    print(f"{'engine':<10} {'linear ms':>10} {'speedup':>8} {'conv2d ms':>10} {'speedup':>8}")
    for engine in ("fp32", *args.engines.split(",")):
        row = f"{engine:<10}"
        for kind in ("linear", "conv2d"):
            t = results[kind].get(engine)
            if t is None:
                row += f" {'-':>10} {'-':>8}"
            else:
                row += f" {t * 1e3:>10.2f} {results[kind]['fp32'] / t:>8.2f}"
        print(row)
    lin = results["linear"]
    if "int_mm" in lin:
        print(
            f"\nint_mm Linear breakdown: raw torch._int_mm {raw * 1e3:.2f} ms; module without "
            f"the GEMM (shift, corrections, requantization) {epilogue * 1e3:.2f} ms; "
            f"float32 GEMM of the same shape {sgemm * 1e3:.2f} ms"
        )
        vs_fp32 = lin["fp32"] / lin["int_mm"]
        line = f"target int_mm >= 3x fp32: {vs_fp32:.2f}x -> {'met' if vs_fp32 >= 3 else 'MISSED'}"
        if "fbgemm" in lin:
            vs_fb = lin["int_mm"] / lin["fbgemm"]
            line += f";  int_mm within 1.2x of fbgemm: {vs_fb:.2f}x -> "
            line += "met" if vs_fb <= 1.2 else "MISSED"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
