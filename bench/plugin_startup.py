"""What the qbc pytest plugin costs a session that collects no golden check.

One trivial test (``assert 1 + 1 == 2``) in a temp folder, run by ``python -m pytest`` with the
plugin active (it is a ``pytest11`` entry point: active in every pytest run of the environment)
and with ``-p no:qbc``, alternating, repeated. Prints the medians, their difference (target:
< 0.3 s) and ratio, and whether ``import harness.pytest_plugin`` imports torch
(``python -X importtime``).

    python bench/plugin_startup.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from common import PYTHON, Timing, alternate, header

TARGET_SECONDS = 0.3


def imports_torch() -> list[str]:
    """Modules named torch* that ``import harness.pytest_plugin`` imports."""
    done = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", "import harness.pytest_plugin"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()]
    return [n for n in names if n == "torch" or n.startswith("torch.")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()

    header("pytest start-up with and without the qbc plugin")
    torch_modules = imports_torch()
    print(f"import harness.pytest_plugin imports torch: {'yes' if torch_modules else 'no'}")
    with tempfile.TemporaryDirectory() as tmp:
        test = Path(tmp) / "test_trivial.py"
        test.write_text("def test_one():\n    assert 1 + 1 == 2\n")
        base = [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)]
        with_qbc, without = Timing("with qbc      "), Timing("-p no:qbc     ")
        alternate([(base, with_qbc), ([*base, "-p", "no:qbc"], without)], args.repeats)
    print(with_qbc.describe())
    print(without.describe())
    extra = with_qbc.wall_med - without.wall_med
    met = extra < TARGET_SECONDS and not torch_modules
    print(
        f"plugin cost: {extra:+.3f} s wall (target < {TARGET_SECONDS} s), "
        f"ratio {with_qbc.wall_med / without.wall_med:.3f}x, "
        f"cpu {with_qbc.cpu_med - without.cpu_med:+.3f} s  {'MET' if met else 'MISSED'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
