#!/usr/bin/env python
"""Regenerate today's goldens of qbc's store, or check that regeneration is deterministic.

    python tools/regen_goldens.py                 # rewrite golden/<subject>/<today's producer>/
    python tools/regen_goldens.py --check         # regenerate into a temp store and compare
    python tools/regen_goldens.py --producer torch-2.6.0_qbc-0.1.0   # refused: not ours

A thin wrapper over ``qbc regen`` (harness/regen.py, where the behaviour is documented) whose
store defaults to this checkout's ``golden/`` whatever the working directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import regen

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="regen_goldens", description=__doc__.splitlines()[0])
    regen.add_arguments(p, default_store=str(REPO / "golden"))
    return regen.run(p.parse_args(argv), prog="regen_goldens")


if __name__ == "__main__":
    sys.exit(main())
