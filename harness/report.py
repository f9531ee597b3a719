"""Reports: compatibility matrix, numeric drift and coverage, as Markdown, HTML or JSON.

Input is the list of check outcomes written by the pytest plugin (``--qbc-results``): one row
per ``<subject>/<producer>/<engine>/<case>/<format>`` with outcome, message and drift numbers.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from harness import compat
from harness.formats import format_names, get_format
from harness.manifest import producer_id
from harness.store import iter_goldens

SYMBOL = {"passed": "ok", "failed": "FAIL", "xfail": "xfail", "xpass": "XPASS", "skipped": "skip"}


def split_id(cid: str) -> tuple[str, str, str, str, str]:
    subject, producer, engine, case, fmt = cid.split("/")
    return subject, producer, engine, case, fmt


def matrix(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """(subject, producer, engine) x format -> outcome counts, plus the consumer torch."""
    cells: dict[tuple[str, str, str], dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    for row in rows:
        subject, producer, engine, _case, fmt = split_id(row["id"])
        cells[(subject, producer, engine)][fmt][row["outcome"]] += 1
    return {
        "consumer": f"torch-{compat.torch_release()}",
        "rows": [
            {
                "subject": s,
                "producer": p,
                "engine": e,
                "formats": {f: dict(c) for f, c in fmts.items()},
            }
            for (s, p, e), fmts in sorted(cells.items())
        ],
    }


def drift(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Checks that passed with a nonzero error (within policy), worst first."""
    out = [
        {"id": r["id"], **r["drift"]}
        for r in rows
        if r.get("drift")
        and (r["drift"].get("max_steps", 0) > 0 or r["drift"].get("mismatched", 0) > 0)
    ]
    return sorted(out, key=lambda d: -d.get("max_steps", 0))


def coverage(store: Path, producer: str | None = None) -> dict[str, Any]:
    """For the producer (default: current): which case x engine x format has a golden, what is
    missing against today's case table, and which goldens belong to no current case."""
    from harness.cases import all_cases
    from harness.subjects import get_subject

    producer = producer or producer_id()
    have = {
        (g.subject, g.engine, g.case, f)
        for g in iter_goldens(store)
        if g.producer == producer
        for f in g.formats
    }
    want = set()
    for case in all_cases():
        subject = get_subject(case.subject)
        for engine in case.engines or subject.engines():
            if subject.unavailable_reason(engine) is None:
                want.update((case.subject, engine, case.name, f) for f in case.formats_for(engine))
    return {
        "producer": producer,
        "covered": len(have & want),
        "expected": len(want),
        "missing": sorted("/".join(k) for k in want - have),
        "orphaned": sorted("/".join(k) for k in have - want),
    }


def _cell(counts: dict[str, int]) -> str:
    if not counts:
        return "-"
    order = ["failed", "xpass", "xfail", "skipped", "passed"]
    return " ".join(f"{SYMBOL[k]} {counts[k]}" for k in order if counts.get(k))


def render_text(m: dict[str, Any]) -> str:
    """Plain-text compatibility matrix (what ``qbc verify`` prints)."""
    fmts = [f for f in format_names() if any(f in r["formats"] for r in m["rows"])]
    head = ["subject", "producer", "engine", *fmts]
    table = [
        [r["subject"], r["producer"], r["engine"], *[_cell(r["formats"].get(f, {})) for f in fmts]]
        for r in m["rows"]
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table, strict=False)]
    lines = [f"compatibility matrix (consumer {m['consumer']}; cells: outcome count per golden)"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)))
    lines += [
        "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)) for row in table
    ]
    return "\n".join(lines)


def render(fmt: str, rows: list[dict[str, Any]], store: Path) -> str:
    m, d, c = matrix(rows), drift(rows), coverage(store)
    failures = [r for r in rows if r["outcome"] in ("failed", "xpass")]
    code_formats = [f for f in format_names() if get_format(f).runs_code_on_load]
    # Checks whose golden file is loaded with code execution (package, and a case's declared
    # trusted loads): the manifest flags them; they run only after the file's hash matched.
    code_checks = sorted(
        f"{g.id}/{f}"
        for g in iter_goldens(store)
        for f, entry in g.manifest["files"].items()
        if entry.get("runs_code_on_load")
    )
    if fmt == "json":
        return json.dumps(
            {
                "matrix": m,
                "drift": d,
                "coverage": c,
                "failures": failures,
                "runs_code_on_load": code_formats,
                "runs_code_on_load_checks": code_checks,
            },
            indent=1,
        )
    fmts = [f for f in format_names() if any(f in r["formats"] for r in m["rows"])]
    header = ["subject", "producer", "engine", *fmts]
    body = [
        [r["subject"], r["producer"], r["engine"], *[_cell(r["formats"].get(f, {})) for f in fmts]]
        for r in m["rows"]
    ]
    drift_rows = [
        [
            x["id"],
            f"{x.get('max_steps', 0):.4g}",
            str(x.get("mismatched", 0)),
            f"{x.get('min_sqnr_db', 0):.1f}",
        ]
        for x in d
    ]
    fail_rows = [
        [r["id"], r["outcome"], r["message"].splitlines()[0] if r["message"] else ""]
        for r in failures
    ]
    sections = [
        (f"Compatibility matrix (consumer {m['consumer']})", header, body),
        (
            "Numeric drift within policy",
            ["check", "max steps", "mismatched", "min SQNR dB"],
            drift_rows,
        ),
        ("Failures", ["check", "outcome", "message"], fail_rows),
        (
            f"Coverage of {c['producer']}: {c['covered']}/{c['expected']}",
            ["missing or orphaned golden"],
            [[f"missing {x}"] for x in c["missing"]] + [[f"orphaned {x}"] for x in c["orphaned"]],
        ),
    ]
    note = (
        f"Formats whose loader runs code from the golden: {', '.join(code_formats)}. "
        f"Checks that run code on load (only after the file's sha256 matched its manifest): "
        f"{', '.join(code_checks) or 'none'}."
    )
    if fmt == "md":
        out = ["# qbc report", "", note, ""]
        for title, head, rows_ in sections:
            out += [f"## {title}", ""]
            if not rows_:
                out += ["(none)", ""]
                continue
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(str(x).replace("|", "\\|") for x in r) + " |" for r in rows_]
            out.append("")
        return "\n".join(out)
    if fmt == "html":
        out = [
            "<!doctype html><html><head><meta charset='utf-8'><title>qbc report</title></head><body>",
            "<h1>qbc report</h1>",
            f"<p>{html.escape(note)}</p>",
        ]
        for title, head, rows_ in sections:
            out.append(
                f"<h2>{html.escape(title)}</h2><table border='1'><tr>"
                + "".join(f"<th>{html.escape(h)}</th>" for h in head)
                + "</tr>"
            )
            out += [
                "<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>"
                for r in rows_
            ]
            out.append("</table>")
        out.append("</body></html>")
        return "\n".join(out)
    raise ValueError(f"unknown report format {fmt!r}; known: md, html, json")
