#!/usr/bin/env python
"""Every check of one ``qbc verify --json`` result has the same verdict in a reference result.

    python tools/same_verdicts.py REFERENCE.json OTHER.json

Used by CI to show that qbc installed from a wheel (``pip install .``) and run from outside the
checkout (OTHER, possibly over a subset of the store) gives the verdicts of the editable install
run in the checkout (REFERENCE). A check's verdict is its outcome (passed, failed, xfail, xpass,
skipped) and, for a known break, the entry it matched. Exit 0: OTHER is non-empty and every one
of its checks agrees; 1: differences, listed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def verdicts(path: Path) -> dict[str, tuple[str, str]]:
    rows = json.loads(path.read_text())
    return {r["id"]: (r["outcome"], r.get("known_break", "")) for r in rows}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    a, b = (verdicts(Path(p)) for p in argv)
    diffs = [
        f"{cid}: {a.get(cid, ('absent',))[0]} (reference) vs {b[cid][0]}"
        for cid in sorted(b)
        if a.get(cid) != b[cid]
    ]
    for line in diffs:
        print(line)
    print(f"{len(b)} checks compared: {len(diffs)} verdicts differ")
    return 1 if diffs or not b else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
