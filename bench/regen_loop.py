#!/usr/bin/env python
"""Regeneration under load: N runs of ``tools/regen_goldens.py --subject torch_ao`` into a temp
store, with the TorchScript repair (harness.compat.keep_jit_builtins_stable) and, as the
baseline measured in the same run, without it; CPU-burning processes run beside all along.

Issue 12: about one run in eight failed under load scripting ``nn.Conv2d`` in the
``conv2d_graph*`` builders ("builtin cannot be used as a value") and left an empty
``.golden.staging`` folder. The script prints, per side, runs, failures (with their first
error line), wall time, and whether any staging folder was left behind; exit status 1 when a
repaired run failed or left anything.

    python bench/regen_loop.py [--runs 30] [--baseline-runs 10] [--burners N]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, REPO, load_average

TOOL = REPO / "tools" / "regen_goldens.py"
# The baseline: the same tool with the repair made a no-op before harness is imported.
WITHOUT_REPAIR = (
    "import runpy, sys, harness.compat as c; c.keep_jit_builtins_stable = lambda: 0; "
    f"sys.argv[0] = {str(TOOL)!r}; runpy.run_path({str(TOOL)!r}, run_name='__main__')"
)


def one_run(repaired: bool, work: Path) -> tuple[bool, float, str, bool]:
    """(ok, wall seconds, first error line, staging leftovers) of one regeneration."""
    store = work / "golden"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    args = ["--store", str(store), "--subject", "torch_ao"]
    cmd = [PYTHON, str(TOOL), *args] if repaired else [PYTHON, "-c", WITHOUT_REPAIR, *args]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - start
    error = ""
    if proc.returncode:
        lines = [ln for ln in proc.stderr.splitlines() if re.search(r"Error|cannot", ln)]
        error = lines[-1].strip() if lines else f"exit {proc.returncode}"
        if "builtin cannot be used as a value" in proc.stderr:
            error = "builtin cannot be used as a value"
    leftovers = (work / ".golden.staging").exists()
    return proc.returncode == 0, wall, error, leftovers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30, help="regenerations with the repair")
    p.add_argument("--baseline-runs", type=int, default=10, help="regenerations without it")
    p.add_argument("--burners", type=int, default=0, help="CPU-burning processes beside (load)")
    args = p.parse_args(argv)
    # a SIGTERM still runs the finally below (burners and the temp store go)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    burners = [subprocess.Popen([PYTHON, "-c", "while True: pass"]) for _ in range(args.burners)]
    results: dict[bool, list[tuple[bool, float, str, bool]]] = {True: [], False: []}
    loads = []
    try:
        with tempfile.TemporaryDirectory(prefix="qbc-regen-loop-") as tmp:
            # alternate the two sides so both see the same load over time
            schedule = []
            a, b = args.runs, args.baseline_runs
            while a or b:
                if a:
                    schedule.append(True)
                    a -= 1
                if b:
                    schedule.append(False)
                    b -= 1
            for i, repaired in enumerate(schedule, 1):
                r = one_run(repaired, Path(tmp) / "work")
                results[repaired].append(r)
                loads.append(os.getloadavg()[0])
                side = "repaired" if repaired else "baseline"
                print(
                    f"{i:3d} {side:8s} {'ok  ' if r[0] else 'FAIL'} {r[1]:6.1f} s "
                    f"load {loads[-1]:.1f}{'  staging left' if r[3] else ''}  {r[2]}",
                    flush=True,
                )
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()

    print(f"\nload average during the runs: {min(loads):.1f}-{max(loads):.1f} ({load_average()})")
    bad = 0
    for repaired in (True, False):
        rows = results[repaired]
        if not rows:
            continue
        fails = [r for r in rows if not r[0]]
        left = sum(r[3] for r in rows)
        walls = [r[1] for r in rows]
        side = "with the repair" if repaired else "baseline, no repair"
        print(
            f"{side:20s}: {len(rows)} runs, {len(fails)} failed, {left} left a staging folder, "
            f"median {statistics.median(walls):.1f} s"
        )
        for r in fails:
            print(f"    {r[2]}")
        if repaired:
            bad = len(fails) + left
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
