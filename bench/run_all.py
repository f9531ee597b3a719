"""Every benchmark of qbc in one run, each with its baseline measured in the same run.

    python bench/run_all.py                       # all figures (< 10 min on 2 cores)
    python bench/run_all.py --quick               # smallest selections, one repeat (~1-2 min)
    python bench/run_all.py --only overhead parallel --repeats 3
    python bench/run_all.py --profile             # + cProfile of the runner (overhead, scaling)

Benchmarks (``--only`` names): ``overhead`` (bench/runner_overhead.py), ``parallel``
(bench/parallel.py), ``generation`` (bench/generation.py), ``kernels`` (bench/kernels.py of
core-nn and bench/pt2e.py of pt2e, run as subprocesses; pt2e under /work/venv-bench's python
when it exists, for the torchao column), ``scaling`` (bench/scaling.py). The summary at the end
lists every ratio, its target and whether it was met, plus the machine's load while measuring.

Store-wide benchmarks run on the goldens of one engine by default (``--engine``, default
fbgemm: every case kind) so the whole run fits in 10 minutes on a shared 2-core machine;
``--engine all`` uses every engine. Parallelism always uses every engine of today's producer
(fixed per-process startup would dominate a small selection). Past producers' goldens are
left out unless a benchmark's own ``--all-producers`` is given.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generation
import parallel
import runner_overhead
import scaling
from common import BENCH_PYTHON, PYTHON, REPO, header, load_average

ALL = ("overhead", "parallel", "generation", "kernels", "scaling")


def run_script(cmd: list[str], timeout: float) -> tuple[float, str]:
    """Run a benchmark script of another owner; its output is printed as it is."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        out = proc.stdout + (
            f"\n(exit {proc.returncode}) {proc.stderr[-1500:]}" * bool(proc.returncode)
        )
    except subprocess.TimeoutExpired:
        out = f"(timed out after {timeout:.0f}s)"
    return time.perf_counter() - t0, out


def kernels(quick: bool, repeats: int) -> dict[str, Any]:
    header("kernels: int8 Linear/Conv2d per engine vs fp32 (bench/kernels.py, core-nn)")
    result: dict[str, Any] = {}
    if (REPO / "bench" / "kernels.py").exists():
        wall, out = run_script([PYTHON, "bench/kernels.py", *(["--quick"] if quick else [])], 300)
        print("\n".join("  " + line for line in out.strip().splitlines()))
        print(f"  ({wall:.0f}s)")
        result["kernels_out"] = out
    else:
        print("  bench/kernels.py does not exist yet")
    header("export flow: prepare+convert, qbc vs torchao (bench/pt2e.py, pt2e)")
    if (REPO / "bench" / "pt2e.py").exists():
        python = str(BENCH_PYTHON) if BENCH_PYTHON.exists() else PYTHON
        print(f"  interpreter: {python}")
        wall, out = run_script([python, "bench/pt2e.py", "--repeats", str(repeats)], 300)
        lines = [ln for ln in out.strip().splitlines() if "Failed to load" not in ln]
        print("\n".join("  " + line for line in lines))
        print(f"  ({wall:.0f}s)")
        result["pt2e_out"] = out
    else:
        print("  bench/pt2e.py does not exist yet")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=ALL, default=list(ALL))
    p.add_argument("--quick", action="store_true", help="small selections, one repeat")
    p.add_argument(
        "--repeats",
        type=int,
        help="repeats of each timed measurement (default: 2 for overhead, 1 for the others)",
    )
    p.add_argument("--engine", default="fbgemm", help="engine of the goldens used, or 'all'")
    p.add_argument("--profile", action="store_true", help="cProfile the runner loop")
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 2)
    others = args.repeats or 1
    engines = None if args.engine == "all" else [args.engine]
    t0 = time.perf_counter()
    print(f"qbc benchmarks: {' '.join(args.only)}; repeats {repeats}; {load_average()}")
    print(f"python {sys.version.split()[0]}, pid {os.getpid()}")
    summary: list[str] = []
    res: dict[str, Any] = {}
    if "overhead" in args.only:
        r = res["overhead"] = runner_overhead.bench(repeats, engines, args.profile)
        summary.append(
            f"runner overhead (runner/bare, work phase): {r['runner_over_bare_work']:.2f}x "
            f"target <= {runner_overhead.TARGET} "
            f"{'MET' if r['runner_over_bare_work'] <= runner_overhead.TARGET else 'MISSED'}; "
            f"cpu {r['runner_over_bare_work_cpu']:.2f}x; without isolation "
            f"{r['no_isolation_over_bare_work']:.2f}x wall / "
            f"{r['no_isolation_over_bare_work_cpu']:.2f}x cpu; pytest -n 0/bare "
            f"{r['pytest_over_bare_wall']:.2f}x; noise (spread) {r['spread']:.0%}"
        )
    if "parallel" in args.only:
        # The whole of today's producer: per-process startup (~4 s CPU: torch + harness imports,
        # collection) is paid once per xdist worker and by the controller, so a small selection
        # understates what -n 2 gains on the real suite.
        r = res["parallel"] = parallel.bench(others, None if not args.quick else engines)
        summary.append(
            f"parallelism (-n 0 / -n 2 wall): {r['speedup']:.2f}x target >= {parallel.TARGET} "
            f"{'MET' if r['speedup'] >= parallel.TARGET else 'MISSED'}; cpu -n 2/-n 0 "
            f"{r['cpu_ratio']:.2f}x; projected on 2 idle cores {r['idle_projection']:.2f}x"
        )
    if "generation" in args.only:
        r = res["generation"] = generation.bench(others, engines=engines)
        b = next(iter(r["bytes"].values()), {"physical": 0, "goldens": 1})
        summary.append(
            f"generation: {r['goldens']} goldens in {r['generate_wall']:.1f}s "
            f"({r['per_golden']:.2f}s per golden), generate/verify {r['generate_over_verify']:.2f}x; "
            f"committed producer {b['physical'] / 1e6:.2f} MB, "
            f"{b['physical'] / max(b['goldens'], 1) / 1e3:.1f} kB per golden"
        )
    if "kernels" in args.only:
        res["kernels"] = kernels(args.quick, 2 if args.quick else 5)
        summary.append("kernels and export flow: see their tables above")
    if "scaling" in args.only:
        factors = [1, 2, 4] if args.quick else [1, 4, 16]
        cases = ["linear"] if args.quick else None
        r = res["scaling"] = scaling.bench(factors, engines, cases, args.profile)
        summary.append(
            f"scaling: linearity {r['linearity']:.2f}x (work per golden at "
            f"{factors[-1]}x / at 1x; 1.00 = linear), {r['per_golden']:.3f}s per golden + "
            f"{r['fixed']:.2f}s fixed"
        )
    if "overhead" in res and "parallel" in res and args.quick:  # same store only with --quick
        a, b = res["overhead"]["pytest_n0_wall"], res["parallel"]["n0_wall"]
        summary.append(
            f"noise: pytest -n 0 on the same store measured twice: {a:.1f}s and {b:.1f}s "
            f"({abs(a - b) / min(a, b):.0%} apart)"
        )
    header("summary")
    for line in summary:
        print("  " + line)
    print(f"  total {time.perf_counter() - t0:.0f}s; {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
