#!/usr/bin/env python
"""Measure how far the ISA classes this machine reaches drift apart, and the tightest rule.

    python tools/isa_drift.py                         # every (subject, case, engine)
    python tools/isa_drift.py --subject qbc --case 'linear*' --engine fbgemm
    python tools/isa_drift.py --json drift.json       # also write the measurements

For every selected (subject, case, engine), today's code builds the case in each ISA class this
machine can compute in (harness.isa: its own class natively, every lower reachable class in a
worker capped to it) and the expected outputs of every ordered pair of classes are compared in
quantization steps, as the runner compares them (harness.policy): the golden's class gives the
expected output, the other class the actual one. Printed: one line per pair that differs (max
error in steps, elements over 0 and over the fp32 noise allowance, SQNR), and for each
(subject, case, engine) that drifts, the tightest ``[[rule]]`` for harness/data/policy.toml that
lets every measured pair pass as an ``approx`` comparison, with the measurement it comes from.

Exit status 0 (measuring is not judging); 2 on a usage error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: fp32 noise every comparison already allows (harness/data/policy.toml, the fp32 rule)
FLOAT_NOISE_STEPS = 0.001


def measure(
    subjects: list[str], case_glob: str | None, engines: list[str] | None, progress: bool
) -> dict[str, Any]:
    """Expected outputs per class for the selection, compared pairwise (see module docstring)."""
    from tqdm import tqdm

    from harness import isa, isolation
    from harness.cases import select_cases
    from harness.compat import expected_torch_deprecations
    from harness.generate import expected_in_worker
    from harness.policy import compare_leaf, dtype_name, flatten
    from harness.subjects import get_subject

    me = isa.detect()
    classes = list(me.reachable())
    jobs = []
    for name in subjects:
        subject = get_subject(name)
        cases = select_cases(subject.cases(), case_glob) if case_glob else subject.cases()
        for case in cases:
            for engine in case.engines or subject.engines():
                if engines and engine not in engines:
                    continue
                if subject.unavailable_reason(engine) is None:
                    jobs.append((name, case.name, engine))
    rows = []
    for subject, case, engine in tqdm(jobs, desc="isa drift", disable=None if progress else True):
        outputs = {}
        for cls in classes:
            env = isa.cap_environment(cls, me.cpu) if cls != me.cls else {}
            outputs[cls] = flatten(
                isolation.run(expected_in_worker, subject, case, engine, env=env, timeout=900)
            )
        for golden, machine in itertools.permutations(classes, 2):
            ref, got = outputs[golden], outputs[machine]
            for leaf in sorted(ref):
                with expected_torch_deprecations():
                    stats = compare_leaf(leaf, got.get(leaf), ref[leaf])
                err = getattr(stats, "_err", None)
                over_zero = int((err > 0).sum().item()) if err is not None else 0
                over_noise = int((err > FLOAT_NOISE_STEPS).sum().item()) if err is not None else 0
                rows.append(
                    {
                        "subject": subject,
                        "case": case,
                        "engine": engine,
                        "golden_isa": golden,
                        "machine_isa": machine,
                        "leaf": leaf,
                        "dtype": dtype_name(ref[leaf]),
                        "numel": stats.numel,
                        "max_steps": stats.max_steps,
                        "over_0": over_zero,
                        "over_noise": over_noise,
                        "sqnr_db": stats.sqnr_db,
                        "problem": stats.problem,
                    }
                )
    return {
        "machine": me.describe(),
        "classes": classes,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "rows": rows,
    }


def _up(x: float, digits: int = 3) -> float:
    """``x`` rounded up to ``digits`` significant digits (a limit must not undercut the data)."""
    if x <= 0 or not math.isfinite(x):
        return x
    scale = 10 ** (digits - 1 - math.floor(math.log10(x)))
    return math.ceil(x * scale) / scale


def beyond_same_class_policy(row: dict[str, Any], policy: Any) -> bool:
    """Whether a measured pair fails the policy's same-class (``exact``) limits: only those
    pairs need an ISA rule (fp32 noise within the fp32 rule does not)."""
    from harness.policy import Where

    if row["problem"]:
        return True
    where = Where(
        row["subject"], row["engine"], row["case"], "*", "reproduce",
        row["golden_isa"], row["machine_isa"], "exact",
    )  # fmt: skip
    tol = policy.tolerance(where, row["dtype"])
    over = row["over_noise"] if tol.atol_steps >= FLOAT_NOISE_STEPS else row["over_0"]
    return (
        row["max_steps"] > tol.max_steps
        or over > tol.budget(row["numel"])
        or row["sqnr_db"] < tol.min_sqnr_db
    )


def tightest_rules(measured: dict[str, Any], policy: Any = None) -> list[dict[str, Any]]:
    """Per drifting (subject, case, engine): the tightest approx rule every measured pair meets.

    Only pairs beyond the same-class policy count. An element mismatches above ``atol_steps``;
    a float output keeps the fp32 noise allowance as its atol (rules compose per key), so only
    elements beyond it count against the budget.
    """
    from harness.policy import Policy

    policy = policy or Policy.load()
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in measured["rows"]:
        groups.setdefault((r["subject"], r["case"], r["engine"]), []).append(r)
    rules = []
    for (subject, case, engine), rows in sorted(groups.items()):
        drifting = [r for r in rows if beyond_same_class_policy(r, policy)]
        if not drifting:
            continue
        if any(r["problem"] for r in drifting):
            rules.append(
                {
                    "subject": subject,
                    "case": case,
                    "engine": engine,
                    "unmeetable": sorted({r["problem"] for r in drifting if r["problem"]}),
                }
            )
            continue
        floats = all(r["dtype"].startswith("float") for r in drifting)
        over = "over_noise" if floats else "over_0"
        budget = max(r[over] / r["numel"] for r in drifting if r["numel"])
        pairs = sorted({f"{r['golden_isa']}->{r['machine_isa']}" for r in drifting})
        worst = max(drifting, key=lambda r: r["max_steps"])
        rule: dict[str, Any] = {
            "isa_mode": "approx",
            "subject": subject,
            "case": case,
            "engine": engine,
            "atol_steps": FLOAT_NOISE_STEPS if floats else 0,
            "max_steps": _up(worst["max_steps"]),
            "mismatch_budget": _up(budget) if budget > 0 else 0.0,
            "min_sqnr_db": math.floor(min(r["sqnr_db"] for r in drifting) * 10) / 10,
            "measured": (
                f"tools/isa_drift.py, {measured['date']}, {measured['machine']}: classes "
                f"{', '.join(measured['classes'])}; worst pair {worst['golden_isa']} golden vs "
                f"{worst['machine_isa']} ({worst['leaf']}: {worst['max_steps']:.4g} steps, "
                f"{worst[over]} of {worst['numel']} elements over atol, SQNR "
                f"{worst['sqnr_db']:.1f} dB); pairs that drift: {', '.join(pairs)}"
            ),
        }
        if rule["min_sqnr_db"] == math.inf:
            del rule["min_sqnr_db"]
        rules.append(rule)
    return rules


def _toml_value(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float) and v.is_integer():
        return f"{v:.1f}"
    return str(v)


def render(measured: dict[str, Any], rules: list[dict[str, Any]]) -> str:
    lines = [
        f"ISA drift on {measured['machine']}; classes compared: {', '.join(measured['classes'])}",
        "subject/case/engine  golden->machine  leaf  dtype  numel  max steps  over 0  "
        f"over {FLOAT_NOISE_STEPS}  SQNR dB",
    ]
    for r in measured["rows"]:
        if r["problem"] or r["max_steps"] > 0:
            lines.append(
                f"{r['subject']}/{r['case']}/{r['engine']}  {r['golden_isa']}->{r['machine_isa']}"
                f"  {r['leaf']}  {r['dtype']}  {r['numel']}  "
                + (
                    r["problem"]
                    if r["problem"]
                    else f"{r['max_steps']:.4g}  {r['over_0']}  {r['over_noise']}  "
                    f"{r['sqnr_db']:.1f}"
                )
            )
    keys = {f"{r['subject']}/{r['case']}/{r['engine']}" for r in measured["rows"]}
    moved = {
        f"{r['subject']}/{r['case']}/{r['engine']}"
        for r in measured["rows"]
        if r["problem"] or r["max_steps"] > 0
    }
    ruled = {f"{r['subject']}/{r['case']}/{r['engine']}" for r in rules}
    lines.append(
        f"(subject, case, engine) measured: {len(keys)}; identical in every class: "
        f"{len(keys - moved)}; within the same-class policy: {len(moved - ruled)}; "
        f"needing an ISA rule: {len(ruled)}"
    )
    lines.append("")
    lines.append("# tightest rules (harness/data/policy.toml):")
    for rule in rules:
        if "unmeetable" in rule:
            lines.append(
                f"# {rule['subject']}/{rule['case']}/{rule['engine']}: no rule can pass: "
                + "; ".join(rule["unmeetable"])
            )
            continue
        lines.append("[[rule]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in rule.items()]
        lines.append('reason = "..."')
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject", action="append", help="subject (repeatable; default: all)")
    p.add_argument("--case", help="glob over case names")
    p.add_argument("--engine", action="append", help="engine (repeatable; default: all)")
    p.add_argument("--json", help="also write the measurements and rules here")
    args = p.parse_args(argv)
    from harness.subjects import subject_names

    try:
        measured = measure(args.subject or subject_names(), args.case, args.engine, True)
    except KeyError as exc:
        print(f"isa_drift: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    rules = tightest_rules(measured)
    print(render(measured, rules))
    if args.json:
        Path(args.json).write_text(json.dumps({**measured, "rules": rules}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
