"""Kernel benchmark: qbc's quantized Linear / Conv2d per engine against float32 torch.nn.

Run: ``python bench/kernels.py`` (``--quick`` for fewer rounds). Everything is measured in one
run, in interleaved rounds (every timing once per round, so a burst of load from other processes
hits all of them alike); a timing is the median over rounds of the median of a few calls after a
warm-up. By default the clock is this process's CPU time (``--clock cpu``): with one intra-op
thread that is the kernel's own cost, while wall time on a shared machine also counts the time
other processes held the core. ``speedup`` is ``fp32 time / engine time`` (> 1: faster than
float32). The int_mm breakdown separates the raw ``torch._int_mm`` GEMM from the rest of the
module (input shift, zero-point and bias terms, requantization, Python), so the targets
(int_mm >= 3x fp32 and <= 1.3x fbgemm on an AVX512-VNNI CPU; the part without the GEMM <= 15 %
of the float32 GEMM of the same shape on any CPU) can be attributed.
"""

from __future__ import annotations

import argparse
import os
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


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def median_time(
    fn: Callable[[], object], budget_s: float, max_repeats: int, clock: str = "cpu"
) -> float:
    """Median time of ``fn`` in seconds on ``clock``: one warm-up call, then repeats within a
    budget."""
    now = CLOCKS[clock]
    fn()
    t0 = now()
    fn()
    first = now() - t0
    repeats = max(3, min(max_repeats, int(budget_s / max(first, 1e-6))))
    times = [first]
    for _ in range(repeats - 1):
        t0 = now()
        fn()
        times.append(now() - t0)
    return statistics.median(times)


def interleaved(
    timings: dict[str, Callable[[], object]], rounds: int, budget_s: float, clock: str
) -> dict[str, float]:
    """Median over ``rounds`` of each timing's :func:`median_time`, all timings once per round."""
    seen: dict[str, list[float]] = {name: [] for name in timings}
    for _ in range(rounds):
        for name, fn in timings.items():
            seen[name].append(median_time(fn, budget_s, 30, clock))
    return {name: statistics.median(ts) for name, ts in seen.items()}


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
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller budgets")
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
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="default: cpu")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    budget = 0.1 if args.quick else 0.3
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    engines = [e for e in args.engines.split(",") if e]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}, cpu flags: {cpu_flags()}, "
        f"{platform.processor() or platform.machine()}; int_mm plan: {E.engine_detail('int_mm')}"
    )
    print(f"clock {args.clock}, {rounds} interleaved rounds, load average {os.getloadavg()}")
    timings: dict[str, Callable[[], object]] = {}
    for kind, build in (("linear", build_linear), ("conv2d", build_conv)):
        fmod, qmod, qx, x = build()
        timings[f"{kind}/fp32"] = lambda f=fmod, x=x: f(x)
        for engine in engines:
            reason = E.ENGINES[engine].unavailable_reason()
            if reason:
                print(f"  {kind}/{engine}: unavailable ({reason})")
                continue
            # one module per engine: each keeps its own packed / prepared weights
            mod = build()[1]
            mod.load_state_dict(qmod.state_dict())
            mod.set_engine(engine)
            timings[f"{kind}/{engine}"] = lambda q=mod, a=qx: q(*a)

    # where int_mm's time goes (Linear): the raw GEMM, and the module with the GEMM replaced by
    # a copy of its result (= input shift, zero-point and bias terms, requantization, Python)
    _, qint, qx, _ = build_linear()
    qint.set_engine("int_mm")
    a = torch.bitwise_xor(qx[0].to(torch.int8), -128)
    product = torch._int_mm(a, qint.weight.t())
    real_int_mm = torch._int_mm

    def stubbed() -> object:
        def copy(*_: object, out: torch.Tensor | None = None) -> torch.Tensor:
            return product.clone() if out is None else out.copy_(product)

        torch._int_mm = copy  # type: ignore[assignment]
        try:
            return qint(*qx)
        finally:
            torch._int_mm = real_int_mm

    x32, w32 = a.float(), qint.weight.float()
    timings["int_mm/gemm"] = lambda: torch._int_mm(a, qint.weight.t())
    timings["int_mm/without gemm"] = stubbed
    timings["fp32/gemm"] = lambda: torch.mm(x32, w32.t())
    with torch.no_grad(), compat.expected_torch_deprecations():
        results = interleaved(timings, rounds, budget, args.clock)

    m, k, n = LINEAR
    b_, cin, cout, hw, ks = CONV
    print(f"\nLinear M={m} K={k} N={n};  Conv2d {b_}x{cin}x{hw}x{hw} -> {cout}, {ks}x{ks} pad 1")
    print(f"{'engine':<10} {'linear ms':>10} {'speedup':>8} {'conv2d ms':>10} {'speedup':>8}")
    for engine in ("fp32", *engines):
        row = f"{engine:<10}"
        for kind in ("linear", "conv2d"):
            t = results.get(f"{kind}/{engine}")
            if t is None:
                row += f" {'-':>10} {'-':>8}"
            else:
                row += f" {t * 1e3:>10.2f} {results[f'{kind}/fp32'] / t:>8.2f}"
        print(row)
    gemm, rest, sgemm = results["int_mm/gemm"], results["int_mm/without gemm"], results["fp32/gemm"]
    print(
        f"\nint_mm Linear breakdown: raw torch._int_mm {gemm * 1e3:.2f} ms; module without "
        f"the GEMM {rest * 1e3:.2f} ms = {rest / sgemm:.1%} of the float32 GEMM of the same "
        f"shape ({sgemm * 1e3:.2f} ms)"
    )
    verdict = [f"without GEMM <= 15% of fp32 GEMM: {rest / sgemm:.1%} -> "]
    verdict[-1] += "met" if rest <= 0.15 * sgemm else "MISSED"
    if "linear/int_mm" in results:
        vs_fp32 = results["linear/fp32"] / results["linear/int_mm"]
        verdict.append(
            f"int_mm >= 3x fp32: {vs_fp32:.2f}x -> {'met' if vs_fp32 >= 3 else 'MISSED'}"
        )
        if "linear/fbgemm" in results:
            vs_fb = results["linear/int_mm"] / results["linear/fbgemm"]
            verdict.append(f"int_mm <= 1.3x fbgemm: {vs_fb:.2f}x -> ")
            verdict[-1] += "met" if vs_fb <= 1.3 else "MISSED"
    print("targets (Linear): " + ";  ".join(verdict))
    print(f"load average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
