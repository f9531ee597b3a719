"""Parallelism: the BC tests with ``pytest -n 2`` vs ``-n 0`` (speed-up = wall(-n 0) / wall(-n 2)).

    python bench/parallel.py [--repeats 2] [--engine fbgemm ...] [--dist loadgroup]
                             [--torch-threads N]

Both runs use the same store and the same pytest options; they are alternated and repeated so
a change of load on the machine hits both. Target: at least 1.7x on 2 cores. CPU seconds
(all workers summed) are printed too: a speed-up well below 2x with equal CPU means waiting
(contention, serial collection); a speed-up below 2x with higher CPU under ``-n 2`` means
duplicated work (e.g. each worker rebuilding the same case) or oversubscribed threads.

``--torch-threads N`` passes ``--qbc-torch-threads N`` to the runner (0: torch's default
thread count, the behaviour before the runner pinned one thread per process).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, Timing, alternate, header, make_store, ratio_line, selection

TARGET = 1.4  # wall, on the shared 2 cores (issue 15); 1.6 CPU-projected


def pytest_cmd(store: Path, workers: int, extra: list[str]) -> list[str]:
    return [
        PYTHON,
        "-m",
        "pytest",
        "tests/bc",
        "-q",
        "-p",
        "no:cacheprovider",
        "-n",
        str(workers),
        f"--qbc-store={store}",
        *extra,
    ]


def bench(
    repeats: int = 2,
    engines: list[str] | None = None,
    dist: str | None = None,
    torch_threads: int | None = None,
    all_producers: bool = False,
) -> dict[str, Any]:
    """``dist``: comma-separated xdist modes, each timed as its own ``-n 2`` run against the
    same ``-n 0`` run (``default``: no ``--dist``, i.e. what ``pytest -n 2`` does)."""
    header("parallelism: pytest tests/bc -n 2 vs -n 0")
    extra: list[str] = []
    if torch_threads is not None:
        extra.append(f"--qbc-torch-threads={torch_threads}")
    modes = (dist or "default").split(",")
    with tempfile.TemporaryDirectory(prefix="qbc-bench-store-") as tmp:
        store = Path(tmp) / "golden"
        sel = selection(engines, all_producers)
        n = make_store(store, **sel)
        print(f"store: copy of the committed goldens {sel} ({n} goldens)")
        print(f"options: {' '.join(extra) or '(defaults)'}; -n 2 modes: {', '.join(modes)}")
        serial = Timing("-n 0")
        pars = {m: Timing(f"-n 2 ({m})") for m in modes}
        runs = [(pytest_cmd(store, 0, extra), serial)]
        for m, t in pars.items():
            runs.append(
                (pytest_cmd(store, 2, extra + ([] if m == "default" else ["--dist", m])), t)
            )
        alternate(runs, repeats)
    print("  " + serial.describe())
    out: dict[str, Any] = {"n0_wall": serial.wall_med, "modes": {}}
    for m, par in pars.items():
        print("  " + par.describe())
        speedup = serial.wall_med / par.wall_med
        met = speedup >= TARGET
        print("    " + ratio_line("speed-up -n 0 / -n 2 (wall)", speedup, f">= {TARGET}", met))
        print(
            "    " + ratio_line("cpu -n 2 / -n 0 (duplicated work)", par.cpu_med / serial.cpu_med)
        )
        # On 2 idle cores wall(-n 0) ~ its CPU and wall(-n 2) ~ half its CPU (balanced workers):
        # the speed-up this run's CPU costs would give without the other processes' load.
        idle = 2 * serial.cpu_med / par.cpu_med
        print("    " + ratio_line("projected speed-up on 2 idle cores (2 cpu0/cpu2)", idle))
        out["modes"][m] = {
            "speedup": speedup,
            "cpu_ratio": par.cpu_med / serial.cpu_med,
            "idle_projection": idle,
            "n2_wall": par.wall_med,
        }
    first = out["modes"][modes[0]]
    out.update(first)  # the first mode's figures at the top level (bench/run_all.py reads them)
    out["spread"] = (
        max([serial.spread(), *(p.spread() for p in pars.values())])
        if repeats > 1
        else float("nan")
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--engine", action="append", help="only goldens of this engine (repeatable)")
    p.add_argument(
        "--dist",
        help="comma-separated xdist --dist modes to time (default: none given, as a user runs it)",
    )
    p.add_argument("--torch-threads", type=int, help="--qbc-torch-threads for the runner")
    p.add_argument("--all-producers", action="store_true", help="every producer, not only today's")
    args = p.parse_args(argv)
    bench(args.repeats, args.engine, args.dist, args.torch_threads, args.all_producers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
