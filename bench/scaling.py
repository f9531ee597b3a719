"""Scaling: verification time vs number of goldens (1x, 4x, 16x a synthetic store).

    python bench/scaling.py [--factors 1 4 16] [--engine fbgemm] [--case linear ...] [--profile]

A synthetic store of k renamed copies of the selected committed goldens (``common.make_store``:
producer ``torch-X_qbc-Y+copyK``, byte-identical files) is verified with the runner loop in a
fresh interpreter (``bench/runner_overhead.py``'s runner child), which reports its import and
work phases separately. Verification should be linear in the number of goldens: the work phase
per golden should stay flat, and the fit ``wall = a + b * goldens`` gives the fixed cost (a:
interpreter start + imports) and the cost per golden (b). The linearity figure printed is
(work per golden at the largest factor) / (work per golden at 1x): 1.00 is perfectly linear,
above 1 is super-linear. ``--profile`` runs the runner loop of the middle factor under cProfile
and prints what dominates (build of today's case, loads, forwards, isolation, policy).

The default selection (the goldens of three cases with different formats, fbgemm, today's
producer: 4 goldens) keeps 16x under two minutes on a shared 2-core machine; ``--case``/``--engine`` choose another.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, REPO, Timing, current_producer, header, make_store, run_timed

DEFAULT_ENGINES = ["fbgemm"]
DEFAULT_CASES = ["linear", "conv2d_graph", "per_tensor_observer"]


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line y = a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - b * mx, b


def bench(
    factors: list[int] | None = None,
    engines: list[str] | None = None,
    cases: list[str] | None = None,
    profile: bool = False,
) -> dict[str, Any]:
    factors = factors or [1, 4, 16]
    engines = engines or DEFAULT_ENGINES
    cases = cases or DEFAULT_CASES
    header(f"scaling: verification vs number of goldens ({'x, '.join(map(str, factors))}x)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="qbc-bench-scale-") as tmp:
        for k in factors:
            store = Path(tmp) / f"x{k}"
            n = make_store(
                store, copies=k, engines=engines, cases=cases, producers=[current_producer()]
            )
            t = Timing(f"{k}x")
            run_timed(
                [
                    PYTHON,
                    str(REPO / "bench" / "runner_overhead.py"),
                    "--child",
                    "runner",
                    "--store",
                    str(store),
                ],
                t,
            )
            p = t.payloads[0]
            checks = p["passed"] + p["failed"] + p["skipped"]
            rows.append((k, n, t.wall[0], t.cpu[0], p["import"], p["work"], checks))
            print(
                f"  {k:>3}x: {n:>4} goldens, {checks:>5} checks: wall {t.wall[0]:7.2f}s "
                f"(import {p['import']:.2f}s, work {p['work']:7.2f}s = "
                f"{p['work'] / n:.3f}s per golden), cpu {t.cpu[0]:7.2f}s",
                flush=True,
            )
        a, b = _fit([r[1] for r in rows], [r[2] for r in rows])
        linearity = (rows[-1][5] / rows[-1][1]) / (rows[0][5] / rows[0][1])
        print(f"  fit: wall = {a:.2f}s + {b:.3f}s x goldens")
        print(
            f"  linearity (work per golden at {rows[-1][0]}x / at {rows[0][0]}x): "
            f"{linearity:.2f}x (1.00 = linear)"
        )
        prof = None
        if profile:
            import torch
            from runner_overhead import profile_runner

            torch.set_num_threads(1)  # as the runner child and the pytest runner

            mid = factors[len(factors) // 2]
            print(f"  profile at {mid}x (imports excluded; import phase above):")
            prof = profile_runner(Path(tmp) / f"x{mid}")
    return {"rows": rows, "fixed": a, "per_golden": b, "linearity": linearity, "profile": prof}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--engine", action="append")
    p.add_argument("--case", action="append")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    bench(args.factors, args.engine, args.case, args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
