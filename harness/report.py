"""Reports: compatibility matrix, numeric drift and coverage, as Markdown, HTML or JSON.

Input is the list of check outcomes written by the pytest plugin (``--qbc-results``): one row
per ``<subject>/<producer>/<engine>/<case>/<format>`` with outcome, message, drift numbers and
the consumer that ran it. Several result files (one per consumer torch release) combine into one
matrix producer x consumer x format per subject and engine. Markdown output is deterministic
(sorted, no timestamps or durations), so ``docs/compatibility.md`` can be regenerated and
compared byte for byte.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from harness.formats import format_names, get_format
from harness.manifest import parse_producer, producer_id, producer_info
from harness.store import iter_goldens

SYMBOL = {"passed": "ok", "failed": "FAIL", "xfail": "xfail", "xpass": "XPASS", "skipped": "skip"}


def split_id(cid: str) -> tuple[str, str, str, str, str]:
    subject, producer, engine, case, fmt = cid.split("/")
    return subject, producer, engine, case, fmt


def consumer_of(row: dict[str, Any]) -> dict[str, str]:
    """The consumer that produced a row; rows written before rows named it are today's."""
    return row.get("consumer") or producer_info()


def _version_key(pid: str) -> tuple[Any, ...]:
    """Sort producers / consumers by torch release numerically (2.6 before 2.13), then name."""
    release, qbc = parse_producer(pid)
    return (release, qbc, pid)


def matrix(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """(subject, engine, producer, consumer) x format -> outcome counts, plus the consumers."""
    cells: dict[tuple[str, str, str, str], dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    consumers: dict[str, dict[str, str]] = {}
    for row in rows:
        subject, producer, engine, _case, fmt = split_id(row["id"])
        info = consumer_of(row)
        consumers[info["id"]] = info
        cells[(subject, engine, producer, info["id"])][fmt][row["outcome"]] += 1
    ordered = sorted(consumers, key=_version_key)
    return {
        # one label for the single-consumer case (``qbc verify``'s header)
        "consumer": ", ".join(ordered) or producer_id(),
        "consumers": [consumers[c] for c in ordered],
        "rows": [
            {
                "subject": s,
                "producer": p,
                "engine": e,
                "consumer": c,
                "formats": {f: dict(n) for f, n in fmts.items()},
            }
            for (s, e, p, c), fmts in sorted(
                cells.items(),
                key=lambda kv: (kv[0][0], kv[0][1], _version_key(kv[0][2]), _version_key(kv[0][3])),
            )
        ],
    }


def drift(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Checks that passed with a nonzero error (within policy), worst first (ties by id)."""
    out = [
        {"id": r["id"], "consumer": consumer_of(r)["id"], **r["drift"]}
        for r in rows
        if r.get("drift")
        and (r["drift"].get("max_steps", 0) > 0 or r["drift"].get("mismatched", 0) > 0)
    ]
    return sorted(out, key=lambda d: (-d.get("max_steps", 0), d["id"], d["consumer"]))


def drift_points(rows: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """Max error in quantization steps per (case, producer), over engines, formats, consumers.

    A case is named ``<subject>/<case>`` (both subjects have a ``linear``). Only checks that
    recorded numbers count (numeric checks that passed); a point of 0 means bit-exact.
    """
    points: dict[tuple[str, str], float] = {}
    for r in rows:
        steps = (r.get("drift") or {}).get("max_steps")
        if steps is None:
            continue
        subject, producer, _engine, case, _fmt = split_id(r["id"])
        key = (f"{subject}/{case}", producer)
        points[key] = max(points.get(key, 0.0), float(steps))
    return points


def store_coverage(store: Path) -> dict[str, Any]:
    """Which (subject, engine, case) has a golden with which formats, per producer in the store.

    Derived from the store alone (not from today's case table or engines), so it reads the same
    whichever torch renders it.
    """
    have: dict[tuple[str, str, str], dict[str, list[str]]] = defaultdict(dict)
    producers: set[str] = set()
    for g in iter_goldens(store):
        producers.add(g.producer)
        have[(g.subject, g.engine, g.case)][g.producer] = sorted(g.formats)
    return {
        "producers": sorted(producers, key=_version_key),
        "rows": [
            {"subject": s, "engine": e, "case": c, "formats": fmts}
            for (s, e, c), fmts in sorted(have.items())
        ],
    }


def breaks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What broke and why: failed, unexpectedly passing (xpass) and known-break (xfail) checks,
    grouped by (consumer, outcome, message) with the check ids, regressions first."""
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for r in rows:
        if r["outcome"] in ("failed", "xpass", "xfail"):
            reason = " / ".join(x.strip() for x in (r.get("message") or "").splitlines() if x)
            groups[(consumer_of(r)["id"], r["outcome"], reason)].append(r["id"])
    rank = {"failed": 0, "xpass": 1, "xfail": 2}
    return [
        {"consumer": c, "outcome": o, "reason": m, "checks": sorted(ids)}
        for (c, o, m), ids in sorted(
            groups.items(), key=lambda kv: (rank[kv[0][1]], _version_key(kv[0][0]), kv[0][2])
        )
    ]


def coverage(store: Path, producer: str | None = None) -> dict[str, Any]:
    """For the producer (default: current): which case x engine x format has a golden, what is
    missing against today's case table, and which goldens belong to no current case."""
    from harness.subjects import all_cases, get_subject

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


def producer_consumer(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per (subject, producer), one column per consumer: every check of that producer's
    goldens run by that consumer, counted by outcome (``ok 990`` when all passed; a known break
    shows as ``xfail N`` with its reason under "What broke and why")."""
    cells: dict[tuple[str, str], dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    consumers: set[str] = set()
    for r in rows:
        subject, producer, *_ = split_id(r["id"])
        consumer = consumer_of(r)["id"]
        consumers.add(consumer)
        cells[(subject, producer)][consumer][r["outcome"]] += 1
    ordered = sorted(consumers, key=_version_key)
    head = ["subject", "producer ↓ / consumer →", *ordered]
    body = [
        [subject, producer, *[_cell(cells[(subject, producer)].get(c, {})) for c in ordered]]
        for subject, producer in sorted(cells, key=lambda k: (k[0], _version_key(k[1])))
    ]
    return head, body


def _cell(counts: dict[str, int]) -> str:
    if not counts:
        return "-"
    order = ["failed", "xpass", "xfail", "skipped", "passed"]
    return " ".join(f"{SYMBOL[k]} {counts[k]}" for k in order if counts.get(k))


def _matrix_table(m: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    fmts = [f for f in format_names() if any(f in r["formats"] for r in m["rows"])]
    head = ["subject", "producer", "engine", "consumer", *fmts]
    body = [
        [
            r["subject"],
            r["producer"],
            r["engine"],
            r["consumer"],
            *[_cell(r["formats"].get(f, {})) for f in fmts],
        ]
        for r in m["rows"]
    ]
    return head, body


def render_text(m: dict[str, Any]) -> str:
    """Plain-text compatibility matrix (what ``qbc verify`` prints)."""
    head, table = _matrix_table(m)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table, strict=False)]
    lines = [f"compatibility matrix (consumer {m['consumer']}; cells: outcome count per golden)"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)))
    lines += [
        "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)) for row in table
    ]
    return "\n".join(lines)


def _short(ids: list[str], limit: int = 6) -> str:
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def _coverage_table(c: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per (subject, engine, case) with the formats any producer wrote for it; a
    producer's cell is "all", what it lacks ("no exported"), or "no golden"."""
    order = {f: i for i, f in enumerate(format_names())}
    head = ["subject", "engine", "case", "formats", *c["producers"]]
    body = []
    for r in c["rows"]:
        union = sorted(
            {f for fmts in r["formats"].values() for f in fmts},
            key=lambda f: (order.get(f, len(order)), f),
        )
        cells = []
        for p in c["producers"]:
            fmts = r["formats"].get(p)
            if fmts is None:
                cells.append("no golden")
            else:
                lacking = [f for f in union if f not in fmts]
                cells.append(f"no {' '.join(lacking)}" if lacking else "all")
        body.append([r["subject"], r["engine"], r["case"], " ".join(union), *cells])
    return head, body


def _fmt_steps(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


def drift_svg(points: dict[tuple[str, str], float]) -> str:
    """Inline SVG scatter: x = case, y = max error in quantization steps, one colour per producer.

    One ``<circle class="mark">`` per (case, producer) point, with its numbers in ``data-*``
    attributes and a ``<title>`` tooltip. y is linear from 0 to max(1, worst finite point);
    a non-finite point is drawn at the top in black.
    """
    cases = sorted({c for c, _ in points})
    producers = sorted({p for _, p in points}, key=_version_key)
    finite = [v for v in points.values() if math.isfinite(v)]
    top = max([1.0, *finite])
    left, right, plot_h, pad_top, step = 60, 220, 240, 20, 14
    width = left + step * max(len(cases), 1) + right
    height = pad_top + plot_h + 200  # room for rotated case labels
    y0 = pad_top + plot_h

    def y(v: float) -> float:
        return y0 - (min(v, top) / top) * plot_h if math.isfinite(v) else pad_top

    out = [
        f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
        "aria-label='max error in quantization steps per case and producer'>",
        f"<line x1='{left}' y1='{y0}' x2='{left + step * len(cases)}' y2='{y0}' stroke='#000'/>",
        f"<line x1='{left}' y1='{pad_top}' x2='{left}' y2='{y0}' stroke='#000'/>",
    ]
    for frac in (0.0, 0.5, 1.0):
        v = top * frac
        out.append(
            f"<text x='{left - 6}' y='{y(v) + 4:.1f}' text-anchor='end' font-size='10'>"
            f"{_fmt_steps(v)}</text>"
        )
    out.append(
        f"<text x='14' y='{pad_top + plot_h / 2}' font-size='11' "
        f"transform='rotate(-90 14 {pad_top + plot_h / 2})' text-anchor='middle'>"
        "max error (steps)</text>"
    )
    for i, case in enumerate(cases):
        x = left + step * i + step / 2
        out.append(
            f"<text x='{x}' y='{y0 + 10}' font-size='9' transform='rotate(60 {x} {y0 + 10})'>"
            f"{html.escape(case)}</text>"
        )
    # producers side by side inside a case's column, so equal values do not hide each other
    offset = {p: (j - (len(producers) - 1) / 2) * 3 for j, p in enumerate(producers)}
    for (case, producer), v in sorted(points.items()):
        x = left + step * cases.index(case) + step / 2 + offset[producer]
        colour = PALETTE[producers.index(producer) % len(PALETTE)] if math.isfinite(v) else "#000"
        out.append(
            f"<circle class='mark' cx='{x:.1f}' cy='{y(v):.1f}' r='3' fill='{colour}' "
            f"data-case='{html.escape(case)}' data-producer='{html.escape(producer)}' "
            f"data-steps='{_fmt_steps(v)}'><title>{html.escape(case)} "
            f"{html.escape(producer)}: {_fmt_steps(v)} steps</title></circle>"
        )
    lx = left + step * len(cases) + 20
    for j, p in enumerate(producers):
        out.append(
            f"<circle cx='{lx}' cy='{pad_top + 14 * j}' r='4' fill='{PALETTE[j % len(PALETTE)]}'/>"
            f"<text x='{lx + 8}' y='{pad_top + 14 * j + 4}' font-size='11'>{html.escape(p)}</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


def compact_results(rows: list[dict[str, Any]]) -> str:
    """One consumer's rows in the compact form committed under docs/compat/: the consumer once,
    the distinct warnings once (``warnings``: origin, category, message), then per row only what
    the report reads (id, outcome, reason, known break, drift; a bit-exact check keeps only
    ``max_steps`` 0; ``w``: indexes of its warnings), one row per line, sorted by id."""
    consumers = {json.dumps(consumer_of(r), sort_keys=True) for r in rows}
    if len(consumers) != 1:
        raise ValueError(f"compact results hold one consumer; these rows have {len(consumers)}")
    table = sorted({_warning_key(w) for r in rows for w in r.get("warnings") or []})
    index = {w: i for i, w in enumerate(table)}

    def slim(r: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"id": r["id"], "outcome": r["outcome"]}
        if r.get("message"):
            out["message"] = r["message"]
        if r.get("known_break"):
            out["known_break"] = r["known_break"]
        d = r.get("drift") or {}
        if d:
            exact = not d.get("max_steps") and not d.get("mismatched")
            out["drift"] = {"max_steps": d.get("max_steps", 0)} if exact else d
        if r.get("warnings"):
            out["w"] = sorted({index[_warning_key(w)] for w in r["warnings"]})
        return out

    body = ",\n".join(
        json.dumps(slim(r), separators=(",", ":")) for r in sorted(rows, key=lambda r: r["id"])
    )
    warnings = ",\n".join(
        json.dumps(dict(zip(_WARNING_FIELDS, w, strict=True)), separators=(",", ":")) for w in table
    )
    head = f'{{"consumer":{consumers.pop()},\n'
    if table:  # a run without warnings keeps the form it had before warnings were recorded
        head += f'"warnings":[\n{warnings}\n],\n'
    return f'{head}"rows":[\n{body}\n]}}\n'


#: what identifies a recorded warning in reports (its line number is left out: it moves
#: between torch patch releases while the warning stays the same)
_WARNING_FIELDS = ("origin", "category", "message")


def _warning_key(w: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(w[k]) for k in _WARNING_FIELDS)


def expand_compact(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a compact results file, each with its consumer and its warnings spelled out."""
    table = data.get("warnings", [])
    rows = []
    for r in data["rows"]:
        row = {"consumer": data["consumer"], **{k: v for k, v in r.items() if k != "w"}}
        if "w" in r:
            row["warnings"] = [table[i] for i in r["w"]]
        rows.append(row)
    return rows


def warning_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Warnings raised while goldens loaded and ran, per consumer: who said what, in how many
    checks (recorded, never judged), most frequent first."""
    checks: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for r in rows:
        for w in {_warning_key(w) for w in r.get("warnings") or []}:
            checks[(consumer_of(r)["id"], w)].append(r["id"])
    return [
        {"consumer": c, **dict(zip(_WARNING_FIELDS, w, strict=True)), "checks": sorted(ids)}
        for (c, w), ids in sorted(
            checks.items(), key=lambda kv: (_version_key(kv[0][0]), -len(kv[1]), kv[0][1])
        )
    ]


def render(fmt: str, rows: list[dict[str, Any]], store: Path) -> str:
    """The report as ``md``, ``html`` or ``json``; md and html depend only on rows and store."""
    m, d, br = matrix(rows), drift(rows), breaks(rows)
    code_formats = [f for f in format_names() if get_format(f).runs_code_on_load]
    # Checks whose golden file is loaded with code execution (package, and a case's declared
    # trusted loads): the manifest flags them; they run only after the file's hash matched.
    code_checks = sorted(
        f"{g.id}/{f}"
        for g in iter_goldens(store)
        for f, entry in g.manifest["files"].items()
        if entry.get("runs_code_on_load")
    )
    if fmt == "results":
        return compact_results(rows)
    if fmt == "json":
        return json.dumps(
            {
                "matrix": m,
                "drift": d,
                "coverage": coverage(store),
                "store_coverage": store_coverage(store),
                "breaks": br,
                "warnings": warning_summary(rows),
                "failures": [r for r in rows if r["outcome"] in ("failed", "xpass")],
                "runs_code_on_load": code_formats,
                "runs_code_on_load_checks": code_checks,
            },
            indent=1,
        )
    sc = store_coverage(store)
    head, body = _matrix_table(m)
    consumer_rows = [[c["id"], c["torch"], c["qbc"], c["python"]] for c in m["consumers"]]
    break_rows = [
        [
            b["consumer"],
            SYMBOL[b["outcome"]],
            str(len(b["checks"])),
            b["reason"],
            _short(b["checks"]),
        ]
        for b in br
    ]
    drift_rows = [
        [
            x["id"],
            x["consumer"],
            _fmt_steps(x.get("max_steps", 0)),
            str(x.get("mismatched", 0)),
            f"{x.get('min_sqnr_db', 0):.1f}",
        ]
        for x in d
    ]
    warning_rows = [
        [
            w["consumer"],
            w["origin"],
            w["category"],
            w["message"],
            str(len(w["checks"])),
            _short(w["checks"], 3),
        ]
        for w in warning_summary(rows)
    ]
    cov_head, cov_body = _coverage_table(sc)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        counts[consumer_of(r)["id"]][r["outcome"]] += 1
    summary = [
        [c, *[str(counts[c].get(o, 0)) for o in ("passed", "failed", "xfail", "xpass", "skipped")]]
        for c in sorted(counts, key=_version_key)
    ]
    sections: list[tuple[str, list[str], list[list[str]]]] = [
        ("Consumers", ["consumer", "torch", "qbc", "python"], consumer_rows),
        ("Summary", ["consumer", "passed", "failed", "xfail", "xpass", "skipped"], summary),
        ("Producer × consumer (cells: outcome count over every check)", *producer_consumer(rows)),
        ("Compatibility matrix (cells: outcome count per golden)", head, body),
        (
            "What broke and why",
            ["consumer", "outcome", "checks", "reason", "check ids"],
            break_rows,
        ),
        (
            "Warnings raised while goldens loaded and ran (recorded, not judged)",
            ["consumer", "raised at", "category", "message", "checks", "e.g."],
            warning_rows,
        ),
        (
            "Numeric drift within policy",
            ["check", "consumer", "max steps", "mismatched", "min SQNR dB"],
            drift_rows,
        ),
        ("Coverage: formats per golden and producer", cov_head, cov_body),
    ]
    note = (
        f"Formats whose loader runs code from the golden: {', '.join(code_formats)}. "
        f"Checks that run code on load (only after the file's sha256 matched its manifest): "
        f"{', '.join(code_checks) or 'none'}."
    )
    legend = (
        "Outcomes: ok = passed, FAIL = regression, xfail = known break (reason below), "
        "XPASS = a known break now passes, skip = cannot run on that consumer."
    )
    if fmt == "md":
        generated = (
            "Generated by `qbc report --format md` from `qbc verify --json` results "
            "(one file per consumer); do not edit by hand, regenerate."
        )
        out = ["# qbc report", "", generated, "", note, "", legend, ""]
        for title, head_, rows_ in sections:
            out += [f"## {title}", ""]
            if not rows_:
                out += ["(none)", ""]
                continue
            out.append("| " + " | ".join(head_) + " |")
            out.append("|" + "---|" * len(head_))
            out += ["| " + " | ".join(str(x).replace("|", "\\|") for x in r) + " |" for r in rows_]
            out.append("")
        return "\n".join(out)
    if fmt == "html":
        # One self-contained file: inline style and SVG, no script, no external reference.
        out = [
            "<!doctype html><html><head><meta charset='utf-8'><title>qbc report</title>",
            "<style>body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
            "td,th{border:1px solid #999;padding:2px 6px}td.bad{background:#fcc}"
            "td.known{background:#ffe9b3}</style></head><body>",
            "<h1>qbc report</h1>",
            f"<p>{html.escape(note)}</p>",
            f"<p>{html.escape(legend)}</p>",
        ]
        ids = {"Compatibility matrix (cells: outcome count per golden)": " id='matrix'"}
        for title, head_, rows_ in sections:
            if title.startswith("Numeric drift"):
                out.append("<h2>Drift: max error in quantization steps per case and producer</h2>")
                out.append(drift_svg(drift_points(rows)))
            out.append(
                f"<h2>{html.escape(title)}</h2><table{ids.get(title, '')}><tr>"
                + "".join(f"<th>{html.escape(h)}</th>" for h in head_)
                + "</tr>"
            )
            for r in rows_:
                tds = []
                for x in r:
                    cls = " class='bad'" if ("FAIL" in x or "XPASS" in x) else ""
                    cls = cls or (" class='known'" if x.startswith("xfail") else "")
                    tds.append(f"<td{cls}>{html.escape(str(x))}</td>")
                out.append("<tr>" + "".join(tds) + "</tr>")
            out.append("</table>")
        out.append("</body></html>")
        return "\n".join(out)
    raise ValueError(f"unknown report format {fmt!r}; known: md, html, json, results")
