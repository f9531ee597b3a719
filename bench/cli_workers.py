"""Where ``qbc verify -n auto`` starts paying for its workers: in process vs 2 xdist workers.

Stores of growing size (temp copies of today's producer, a few engines / cases), each verified
with ``qbc verify -n 0`` and ``-n 2``, alternating. A worker imports torch and harness and
builds today's cases again, so a small store verifies faster in process; ``-n auto`` runs in
process below ``harness.cli.PARALLEL_MIN_CHECKS`` checks. Prints the ratio per size.

    python bench/cli_workers.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import PYTHON, Timing, current_producer, header, make_store, run_timed

SIZES = {  # label -> make_store selection
    "small": {"engines": ["fbgemm"], "cases": ["linear", "per_tensor_observer"]},
    "medium": {"engines": ["fbgemm"]},
    "large": {"engines": ["fbgemm", "qnnpack", "reference"]},
}


def checks_in(store: Path) -> int:
    from harness.cli import count_checks

    return count_checks(store)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    from harness.cli import PARALLEL_MIN_CHECKS

    header("qbc verify: in process (-n 0) vs two workers (-n 2)")
    for label, selection in SIZES.items():
        with tempfile.TemporaryDirectory() as tmp:
            store = Path(tmp) / "golden"
            make_store(store, producers=[current_producer()], **selection)
            n = checks_in(store)
            base = [PYTHON, "-m", "harness.cli", "verify", "--store", str(store), "-q",
                    "--downstream", "none"]  # fmt: skip
            serial, parallel = Timing(f"{label} -n 0"), Timing(f"{label} -n 2")
            for _ in range(args.repeats):  # alternating; exit 1 (an ISA failure) still counts
                run_timed([*base, "-n", "0"], serial, check=False)
                run_timed([*base, "-n", "2"], parallel, check=False)
        print(f"{label}: {n} checks")
        print("  " + serial.describe())
        print("  " + parallel.describe())
        print(
            f"  -n 2 / -n 0 wall: {parallel.wall_med / serial.wall_med:.2f}x "
            f"(auto picks {'-n 0' if n < PARALLEL_MIN_CHECKS else 'workers'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
