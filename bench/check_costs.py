"""Cost of each check kind: a ``run_check`` loop over chosen producers, wall per format, CPU in all.

    python bench/check_costs.py [--producers torch-2.13.0_qbc-0.2.0,torch-2.6.0_qbc-0.1.0]
                                [--match SUBSTR] [--out outcomes.json] [--no-plan]

Runs in this process, as the runner's checks run in a pytest worker (``-n 0``), announcing the
checks first as the pytest plugin does (``--no-plan``: as before the announcement, one worker
child per code-capable load). CPU counts this process and, after its worker zygotes are stopped
and reaped, the zygotes and every child they forked. ``--out`` writes each check's outcome
(verdict, ISA mode, drift numbers; failure headline) so two versions of the code can be
compared check by check: the per-check verdicts must not change with a speed-up.
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--producers", default="", help="comma-separated producer ids (default: today's)"
    )
    p.add_argument("--store", default=str(REPO / "golden"))
    p.add_argument("--out", help="write every check's outcome to this JSON file")
    p.add_argument("--no-plan", action="store_true", help="do not announce the checks")
    p.add_argument("--match", default="", help="only checks whose id contains this")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from harness import isolation, verify
    from harness.manifest import producer_id
    from harness.outcomes import GoldenFailure, GoldenSkip
    from harness.policy import Policy

    wanted = set(args.producers.split(",")) if args.producers else {producer_id()}
    items = [
        i
        for i in verify.collect(Path(args.store).resolve())
        if i.golden.producer in wanted and args.match in i.id
    ]
    policy = Policy.load(None)
    if not args.no_plan:
        verify.plan_checks(items)
    wall: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    outcomes: dict[str, Any] = {}
    t0, c0 = time.perf_counter(), _cpu()
    for item in items:
        t = time.perf_counter()
        try:
            r = verify.run_check(item, policy)
            outcome: list[Any] = [r.verdict, r.isa.mode, verify.verdict_record(r)]
        except GoldenSkip as exc:
            outcome = ["skip", str(exc)[:200]]
        except GoldenFailure as exc:
            outcome = ["fail", str(exc).splitlines()[0][:300], getattr(exc, "drift", None)]
        wall[item.fmt] += time.perf_counter() - t
        count[item.fmt] += 1
        outcomes[item.id] = outcome
    t1, c1 = time.perf_counter(), _cpu()
    isolation.shutdown()  # reap the zygotes: their CPU and their children's count from here
    c2 = _cpu()
    print(
        f"{len(items)} checks of {', '.join(sorted(wanted))}: wall {t1 - t0:.1f} s, CPU "
        f"{c1[0] - c0[0]:.1f} s in process + {c2[1] - c0[1]:.1f} s in worker processes"
    )
    for fmt in sorted(wall, key=lambda f: -wall[f]):
        print(
            f"  {fmt:18s} {count[fmt]:5d} checks  wall {wall[fmt]:7.1f} s  "
            f"{wall[fmt] / count[fmt] * 1000:6.0f} ms per check"
        )
    kinds = collections.Counter(
        o[0] + ("/" + o[1] if o[0] in ("ok", "approx") else "") for o in outcomes.values()
    )
    print("  outcomes:", dict(kinds))
    if args.out:
        Path(args.out).write_text(json.dumps(outcomes, indent=0, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
