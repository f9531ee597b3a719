"""Reports: compatibility matrix, what broke and why, numeric drift and coverage.

Input is the check results the pytest plugin writes (``--qbc-results``): one
:class:`harness.results.CheckResult` per ``<subject>/<producer>/<engine>/<case>/<format>``,
with outcome, message, drift numbers and the consumer that ran it (JSON rows are converted on
entry). Several results files (one per consumer torch release) combine into one matrix
producer x consumer x format per subject and engine.

Every page starts with the matrix, then what broke grouped by cause, then drift (the HTML page
plots every numeric check, failed ones against their policy limit, on a log scale), then
coverage. Markdown output is deterministic (sorted, no timestamps or durations), so
``docs/compatibility.md`` can be regenerated and compared byte for byte.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.formats import format_names, get_format
from harness.manifest import parse_producer, producer_id, producer_info
from harness.results import WARNING_FIELDS, CheckResult, as_results
from harness.store import iter_goldens
from harness.subjects import get_case

Rows = Iterable[CheckResult | Mapping[str, Any]]

SYMBOL = {
    "passed": "ok",
    "approx": "approx",
    "failed": "FAIL",
    "xfail": "xfail",
    "xpass": "XPASS",
    "skipped": "skip",
}


def state(row: CheckResult) -> str:
    """A row's outcome, with a passing ``approx`` verdict (compared across ISA classes by the
    policy's ISA rules, harness.verify) counted apart from ``passed``."""
    return "approx" if row.outcome == "passed" and row.verdict == "approx" else row.outcome


def consumer_key(info: Mapping[str, str]) -> str:
    """A consumer's label: its id, and the ISA class it computed in when the rows say
    (``torch-2.13.0_qbc-0.1.0 [avx2]``): the same release on two CPU classes is two consumers."""
    return f"{info['id']} [{info['isa']}]" if info.get("isa") else info["id"]


def consumer_of(row: CheckResult) -> Mapping[str, str]:
    """The consumer that produced a row; rows written before rows named it are today's."""
    return row.consumer or producer_info()


def _version_key(pid: str) -> tuple[Any, ...]:
    """Sort producers / consumers by torch release numerically (2.6 before 2.13), then name."""
    release, qbc = parse_producer(pid)
    return (release, qbc, pid)


def matrix(rows: Rows) -> dict[str, Any]:
    """(subject, engine, producer, consumer) x format -> outcome counts, plus the consumers."""
    cells: dict[tuple[str, str, str, str], dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    consumers: dict[str, Mapping[str, str]] = {}
    for r in as_results(rows):
        info = consumer_of(r)
        consumers[consumer_key(info)] = info
        cells[(r.subject, r.engine, r.producer, consumer_key(info))][r.base_format][state(r)] += 1
    ordered = sorted(consumers, key=_version_key)
    return {
        # one label for the single-consumer case (``qbc verify``'s header)
        "consumer": ", ".join(ordered) or producer_id(),
        "consumers": [dict(consumers[c]) for c in ordered],
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


def drift(rows: Rows) -> list[dict[str, Any]]:
    """Checks that passed with a nonzero error (within policy), worst first (ties by id)."""
    out = [
        {"id": r.id, "consumer": consumer_key(consumer_of(r)), **r.drift}
        for r in as_results(rows)
        if r.outcome == "passed"
        and (r.drift.get("max_steps", 0) > 0 or r.drift.get("mismatched", 0) > 0)
    ]
    return sorted(out, key=lambda d: (-d.get("max_steps", 0), d["id"], d["consumer"]))


@dataclass(frozen=True)
class DriftPoint:
    """The worst numeric check of one (case, producer), among the passed or the failed ones."""

    case: str  # ``<subject>/<case>``: both subjects have a ``linear``
    producer: str
    steps: float
    limit: float | None  # the policy's max_steps for that check (None: not recorded)
    failed: bool
    check: str  # the id of the worst check


def drift_points(rows: Rows) -> list[DriftPoint]:
    """Max error in quantization steps per (case, producer) over engines, formats and consumers,
    one point for the checks that passed and one for those that failed.

    Only checks that recorded numbers count (numeric checks); a point of 0 means bit-exact.
    """
    worst: dict[tuple[str, str, bool], DriftPoint] = {}
    for r in as_results(rows):
        steps = r.drift.get("max_steps")
        if steps is None:
            continue
        key = (f"{r.subject}/{r.case}", r.producer, r.bad)
        point = DriftPoint(*key[:2], float(steps), r.drift.get("limit_steps"), r.bad, r.id)
        have = worst.get(key)
        if have is None or _worse(point.steps, have.steps):
            worst[key] = point
    return sorted(worst.values(), key=lambda p: (p.case, _version_key(p.producer), p.failed))


def _worse(a: float, b: float) -> bool:
    return (math.isnan(a) and not math.isnan(b)) or a > b


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


_RANK = {"failed": 0, "xpass": 1, "xfail": 2}


def breaks(rows: Rows) -> list[dict[str, Any]]:
    """What broke and why: failed, unexpectedly passing (xpass) and known-break (xfail) checks,
    grouped by (consumer, outcome, cause), regressions first, with the check ids and the worst
    drift of the group (max steps and that check's limit)."""
    groups: dict[tuple[str, str, str], list[CheckResult]] = defaultdict(list)
    for r in as_results(rows):
        if r.outcome in _RANK:
            groups[(consumer_key(consumer_of(r)), r.outcome, r.cause)].append(r)
    out = []
    for (c, o, cause), members in sorted(
        groups.items(), key=lambda kv: (_RANK[kv[0][1]], _version_key(kv[0][0]), kv[0][2])
    ):
        numeric = [m for m in members if "max_steps" in m.drift]
        entry: dict[str, Any] = {
            "consumer": c,
            "outcome": o,
            "reason": cause,
            "checks": sorted(m.id for m in members),
        }
        if numeric:
            top = max(numeric, key=lambda m: m.drift["max_steps"])
            entry["max_steps"] = top.drift["max_steps"]
            entry["limit_steps"] = top.drift.get("limit_steps")
        out.append(entry)
    return out


def failure_groups(rows: Rows) -> list[dict[str, Any]]:
    """Regressions (failed, xpass) grouped by (subject, engine, case, cause), for the compact
    summary ``qbc verify`` prints last: which producers and formats, and the worst drift."""
    groups: dict[tuple[str, str, str, str], list[CheckResult]] = defaultdict(list)
    for r in as_results(rows):
        if r.bad:
            cause = r.cause if r.outcome == "failed" else "a known break passes (XPASS)"
            groups[(r.subject, r.engine, r.case, cause)].append(r)
    out = []
    for (subject, engine, case, cause), members in sorted(groups.items()):
        steps = [m.drift["max_steps"] for m in members if "max_steps" in m.drift]
        limits = [m.drift["limit_steps"] for m in members if "limit_steps" in m.drift]
        out.append(
            {
                "subject": subject,
                "engine": engine,
                "case": case,
                "cause": cause,
                "checks": sorted(m.id for m in members),
                "producers": sorted({m.producer for m in members}, key=_version_key),
                "formats": sorted({m.format for m in members}),
                "max_steps": max(steps) if steps else None,
                "limit_steps": max(limits) if limits else None,
            }
        )
    return out


def render_failure_groups(groups: list[dict[str, Any]]) -> str:
    """One line per group: ``FAILED subject/engine/case: cause (n checks: formats; producers)``."""
    lines = []
    for g in groups:
        worst = ""
        if g["max_steps"] is not None:
            limit = g["limit_steps"]
            policy = f" (policy max_steps {_fmt_steps(limit)})" if limit is not None else ""
            worst = f"; worst {_fmt_steps(g['max_steps'])} steps{policy}"
        n = len(g["checks"])
        lines.append(
            f"FAILED {g['subject']}/{g['engine']}/{g['case']}: {g['cause']} "
            f"({n} check{'s' * (n != 1)}: {', '.join(g['formats'])} of "
            f"{', '.join(g['producers'])}{worst})"
        )
    return "\n".join(lines)


def coverage(store: Path, producer: str | None = None) -> dict[str, Any]:
    """For a producer (default: today's of the built-in subjects): which case x engine x format
    has a golden, what is missing against today's case table of the subjects that producer
    writes (qbc's own, or the one plug-in its id names), and which goldens belong to no current
    case."""
    from harness.manifest import producer_parts
    from harness.subjects import get_subject, subject_names

    producer = producer or producer_id()
    plugin = producer_parts(producer).subject
    names = [plugin] if plugin else subject_names(builtin=True)
    have = {
        (g.subject, g.engine, g.case, f)
        for g in iter_goldens(store)
        if g.producer == producer
        for f in g.formats
    }
    want = set()
    for name in names:
        subject = get_subject(name)
        for case in subject.cases():
            for engine in case.engines or subject.engines():
                if subject.unavailable_reason(engine) is None:
                    want.update((name, engine, case.name, f) for f in case.formats_for(engine))
    return {
        "producer": producer,
        "covered": len(have & want),
        "expected": len(want),
        "missing": sorted("/".join(k) for k in want - have),
        "orphaned": sorted("/".join(k) for k in have - want),
    }


def producer_consumer(rows: Rows) -> tuple[list[str], list[list[str]]]:
    """One row per (subject, producer), one column per consumer: every check of that producer's
    goldens run by that consumer, counted by outcome (``ok 990`` when all passed; a known break
    shows as ``xfail N`` with its reason under "What broke and why")."""
    cells: dict[tuple[str, str], dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    consumers: set[str] = set()
    for r in as_results(rows):
        consumer = consumer_key(consumer_of(r))
        consumers.add(consumer)
        cells[(r.subject, r.producer)][consumer][state(r)] += 1
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
    order = ["failed", "xpass", "xfail", "skipped", "approx", "passed"]
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
    """Plain-text compatibility matrix (what ``qbc verify`` prints). With one consumer, its
    column is left out (the header names it)."""
    head, table = _matrix_table(m)
    if len(m["consumers"]) <= 1:
        head, table = head[:3] + head[4:], [row[:3] + row[4:] for row in table]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table, strict=False)]
    lines = [f"compatibility matrix (consumer {m['consumer']}; cells: outcome count per golden)"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)).rstrip())
    lines += [
        "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip()
        for row in table
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


def _fmt_steps(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if math.isfinite(x) else str(x)


PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
FAILED_COLOUR = "#d62728"


def drift_svg(points: list[DriftPoint]) -> str:
    """Inline SVG scatter: x = case, y = max error in quantization steps on a log scale.

    One ``<circle class="mark">`` per point (class ``mark failed`` for failed checks, drawn
    larger in red), with its numbers in ``data-*`` attributes and a ``<title>`` tooltip; passed
    points take one colour per producer. A point's policy limit, when above 0, is a short
    horizontal dash at its height in the point's column. Bit-exact points (0 steps) sit on a
    band below the axis labelled 0; a non-finite point is drawn at the top in black.
    """
    cases = sorted({p.case for p in points})
    producers = sorted({p.producer for p in points}, key=_version_key)
    positive = [
        v
        for p in points
        for v in (p.steps, p.limit or 0.0)
        if v is not None and math.isfinite(v) and v > 0
    ]
    lo = math.floor(math.log10(min(positive))) if positive else -3
    hi = math.ceil(math.log10(max(positive))) if positive else 0
    hi = max(hi, lo + 1)
    left, right, plot_h, pad_top, step = 70, 230, 260, 20, 14
    width = left + step * max(len(cases), 1) + right
    zero_y = pad_top + plot_h + 16  # the band of bit-exact points, below the axis
    height = zero_y + 210  # room for rotated case labels
    y0 = pad_top + plot_h

    def y(v: float) -> float:
        if not math.isfinite(v):
            return pad_top - 8
        if v <= 0:
            return zero_y
        frac = (math.log10(v) - lo) / (hi - lo)
        return y0 - min(max(frac, 0.0), 1.0) * plot_h

    def x(p: DriftPoint) -> float:
        # producers side by side inside a case's column, so equal values do not hide each other
        offset = (producers.index(p.producer) - (len(producers) - 1) / 2) * 3
        return left + step * cases.index(p.case) + step / 2 + offset

    out = [
        f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
        "aria-label='max error in quantization steps per case and producer, log scale'>",
        f"<line x1='{left}' y1='{y0}' x2='{left + step * len(cases)}' y2='{y0}' stroke='#000'/>",
        f"<line x1='{left}' y1='{pad_top}' x2='{left}' y2='{y0}' stroke='#000'/>",
    ]
    for decade in range(lo, hi + 1):
        v = 10.0**decade
        out.append(
            f"<line x1='{left}' y1='{y(v):.1f}' x2='{left + step * len(cases)}' y2='{y(v):.1f}' "
            "stroke='#ddd'/>"
            f"<text x='{left - 6}' y='{y(v) + 4:.1f}' text-anchor='end' font-size='10'>"
            f"{_fmt_steps(v)}</text>"
        )
    out.append(
        f"<text x='{left - 6}' y='{zero_y + 4}' text-anchor='end' font-size='10'>0 (exact)</text>"
    )
    out.append(
        f"<text x='14' y='{pad_top + plot_h / 2}' font-size='11' "
        f"transform='rotate(-90 14 {pad_top + plot_h / 2})' text-anchor='middle'>"
        "max error (quantization steps, log)</text>"
    )
    for i, case in enumerate(cases):
        cx = left + step * i + step / 2
        out.append(
            f"<text x='{cx}' y='{zero_y + 12}' font-size='9' "
            f"transform='rotate(60 {cx} {zero_y + 12})'>{html.escape(case)}</text>"
        )
    for p in points:
        if p.limit is not None and math.isfinite(p.limit) and p.limit > 0:
            out.append(
                f"<line class='limit' x1='{x(p) - 5:.1f}' y1='{y(p.limit):.1f}' "
                f"x2='{x(p) + 5:.1f}' y2='{y(p.limit):.1f}' stroke='#555' stroke-width='1.5'/>"
            )
    for p in sorted(points, key=lambda p: p.failed):  # failed marks drawn last, on top
        if not math.isfinite(p.steps):
            colour = "#000"
        elif p.failed:
            colour = FAILED_COLOUR
        else:
            colour = PALETTE[producers.index(p.producer) % len(PALETTE)]
        limit = f", limit {_fmt_steps(p.limit)}" if p.limit is not None else ""
        status = "FAILED" if p.failed else "passed"
        stroke = " stroke='#000'" if p.failed else ""
        out.append(
            f"<circle class='mark{' failed' if p.failed else ''}' cx='{x(p):.1f}' "
            f"cy='{y(p.steps):.1f}' r='{4.5 if p.failed else 3}' fill='{colour}'"
            f"{stroke} "
            f"data-case='{html.escape(p.case)}' data-producer='{html.escape(p.producer)}' "
            f"data-steps='{_fmt_steps(p.steps)}' data-limit='{_fmt_steps(p.limit)}' "
            f"data-failed='{str(p.failed).lower()}'><title>{html.escape(p.check)}: "
            f"{_fmt_steps(p.steps)} steps{limit} ({status})</title></circle>"
        )
    lx = left + step * len(cases) + 20
    legend = [(p, PALETTE[j % len(PALETTE)]) for j, p in enumerate(producers)]
    legend.append(("failed check", FAILED_COLOUR))
    for j, (label, colour) in enumerate(legend):
        out.append(
            f"<circle cx='{lx}' cy='{pad_top + 14 * j}' r='4' fill='{colour}'/>"
            f"<text x='{lx + 8}' y='{pad_top + 14 * j + 4}' font-size='11'>"
            f"{html.escape(label)}</text>"
        )
    j = len(legend)
    out.append(
        f"<line x1='{lx - 5}' y1='{pad_top + 14 * j}' x2='{lx + 5}' y2='{pad_top + 14 * j}' "
        f"stroke='#555' stroke-width='1.5'/><text x='{lx + 8}' y='{pad_top + 14 * j + 4}' "
        "font-size='11'>policy limit</text>"
    )
    out.append("</svg>")
    return "\n".join(out)


def compact_results(rows: Rows) -> str:
    """One consumer's rows in the compact form committed under docs/compat/: the consumer once,
    the distinct warnings once (``warnings``: origin, category, message), then per row only what
    the report reads (id, outcome, reason, known break, drift; a bit-exact check keeps only
    ``max_steps`` 0; ``w``: indexes of its warnings), one row per line, sorted by id.
    :func:`harness.results.read_results` reads it back."""
    results = as_results(rows)
    consumers = {json.dumps(dict(consumer_of(r)), sort_keys=True) for r in results}
    if len(consumers) != 1:
        raise ValueError(f"compact results hold one consumer; these rows have {len(consumers)}")
    table = sorted({_warning_key(w) for r in results for w in r.warnings})
    index = {w: i for i, w in enumerate(table)}

    def slim(r: CheckResult) -> dict[str, Any]:
        full = r.to_dict()
        out: dict[str, Any] = {"id": r.id, "outcome": r.outcome}
        if r.verdict == "approx":
            out["verdict"] = "approx"
        if r.isa and r.isa.get("golden") != r.isa.get("machine"):
            out["isa"] = dict(r.isa)
        if r.message:
            out["message"] = r.message
        if r.known_break:
            out["known_break"] = r.known_break
        if (r.sandbox or "").startswith("trusted"):
            out["sandbox"] = r.sandbox  # loaded without a sandbox: the report lists it
        d = full.get("drift") or {}
        if d:
            exact = not d.get("max_steps") and not d.get("mismatched")
            kept = {k: d[k] for k in ("delegates", "sqnr_vs_float_db") if k in d}
            out["drift"] = {"max_steps": d.get("max_steps", 0), **kept} if exact else d
        if r.warnings:
            out["w"] = sorted({index[_warning_key(w)] for w in r.warnings})
        return out

    body = ",\n".join(
        json.dumps(slim(r), separators=(",", ":"), allow_nan=False)
        for r in sorted(results, key=lambda r: r.id)
    )
    warnings = ",\n".join(
        json.dumps(dict(zip(WARNING_FIELDS, w, strict=True)), separators=(",", ":")) for w in table
    )
    head = f'{{"consumer":{consumers.pop()},\n'
    if table:  # a run without warnings keeps the form it had before warnings were recorded
        head += f'"warnings":[\n{warnings}\n],\n'
    return f'{head}"rows":[\n{body}\n]}}\n'


def _warning_key(w: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(w[k]) for k in WARNING_FIELDS)


def warning_summary(rows: Rows) -> list[dict[str, Any]]:
    """Warnings raised while goldens loaded and ran, per consumer: who said what, in how many
    checks (recorded, never judged), most frequent first."""
    checks: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for r in as_results(rows):
        for w in {_warning_key(w) for w in r.warnings}:
            checks[(consumer_key(consumer_of(r)), w)].append(r.id)
    return [
        {"consumer": c, **dict(zip(WARNING_FIELDS, w, strict=True)), "checks": sorted(ids)}
        for (c, w), ids in sorted(
            checks.items(), key=lambda kv: (_version_key(kv[0][0]), -len(kv[1]), kv[0][1])
        )
    ]


def _json_safe(value: Any) -> Any:
    """Non-finite floats as strings, so the JSON report is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _trusted_loads(golden: Any) -> tuple[str, ...]:
    """The formats the golden's case loads with full unpickling (none if the case is unknown)."""
    try:
        return tuple(get_case(golden.subject, golden.case).trusted_load)
    except KeyError:
        return ()


def render(fmt: str, rows: Rows, store: Path) -> str:
    """The report as ``md``, ``html``, ``json`` or ``results``; md and html depend only on the
    rows and the store."""
    results = as_results(rows)
    if fmt == "results":
        return compact_results(results)
    m, d, br = matrix(results), drift(results), breaks(results)
    code_formats = [f for f in format_names() if get_format(f).runs_code_on_load]
    # Checks whose golden file can run code when loaded (TorchScript, package, a case's declared
    # trusted loads): decided by qbc's formats and cases, never by the manifest (whoever writes
    # a golden could clear its flag); they load only inside harness.sandbox, or under --trust.
    code_checks = sorted(
        f"{g.id}/{f}"
        for g in iter_goldens(store)
        if g.manifest is not None
        for f, entry in g.manifest.files.items()
        if f in code_formats or entry.runs_code_on_load or f in _trusted_loads(g)
    )
    trusted = sorted(r.id for r in results if (r.sandbox or "").startswith("trusted"))
    if fmt == "json":
        return json.dumps(
            _json_safe(
                {
                    "matrix": m,
                    "breaks": br,
                    "drift": d,
                    "drift_points": [p.__dict__ for p in drift_points(results)],
                    "coverage": coverage(store),
                    "store_coverage": store_coverage(store),
                    "warnings": warning_summary(results),
                    "failures": [r.to_dict() for r in results if r.bad],
                    "runs_code_on_load": code_formats,
                    "runs_code_on_load_checks": code_checks,
                    "sandboxes": sorted({r.sandbox for r in results if r.sandbox}),
                    "trusted_checks": trusted,
                }
            ),
            indent=1,
            allow_nan=False,
        )
    sc = store_coverage(store)
    head, body = _matrix_table(m)
    with_isa = any(c.get("isa") for c in m["consumers"])
    consumer_head = ["consumer", "torch", "qbc", "python", *(["isa"] if with_isa else [])]
    consumer_rows = [
        # results measured before consumers recorded their ISA class (docs/compat) have none
        [
            consumer_key(c),
            c["torch"],
            c["qbc"],
            c["python"],
            *([c.get("isa", "-")] if with_isa else []),
        ]
        for c in m["consumers"]
    ]
    break_rows = [
        [
            b["consumer"],
            SYMBOL[b["outcome"]],
            str(len(b["checks"])),
            b["reason"],
            (
                f"{_fmt_steps(b['max_steps'])} (limit {_fmt_steps(b['limit_steps'])})"
                if "max_steps" in b
                else "-"
            ),
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
    float_rows = [
        [r.id, consumer_of(r)["id"], f"{r.drift['sqnr_vs_float_db']:.2f}"]
        for r in sorted(results, key=lambda r: (r.id, consumer_of(r)["id"]))
        if r.drift.get("sqnr_vs_float_db") is not None
    ]
    delegate_rows = [
        [r.id, consumer_of(r)["id"], str(int(r.drift["delegates"]))]
        for r in sorted(results, key=lambda r: (r.id, consumer_of(r)["id"]))
        if r.drift.get("delegates") is not None
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
        for w in warning_summary(results)
    ]
    cov_head, cov_body = _coverage_table(sc)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in results:
        counts[consumer_key(consumer_of(r))][state(r)] += 1
    # Rows of an ISA-aware runner count cross-ISA (approx) verdicts apart from passed ones.
    states = ("passed", *(["approx"] if with_isa else []), "failed", "xfail", "xpass", "skipped")
    summary = [
        [c, *[str(counts[c].get(o, 0)) for o in states]] for c in sorted(counts, key=_version_key)
    ]
    matrix_title = "Compatibility matrix (cells: outcome count per golden)"
    drift_title = "Numeric drift within policy"
    sections: list[tuple[str, list[str], list[list[str]]]] = [
        (
            "Producer × consumer (cells: outcome count over every check)",
            *producer_consumer(results),
        ),
        (matrix_title, head, body),
        (
            "What broke and why (grouped by cause)",
            ["consumer", "outcome", "checks", "cause", "worst steps", "check ids"],
            break_rows,
        ),
        (drift_title, ["check", "consumer", "max steps", "mismatched", "min SQNR dB"], drift_rows),
        (
            "Quantization error: SQNR of the quantized output vs the float model",
            ["reproduce check", "consumer", "SQNR dB"],
            float_rows,
        ),
        (
            "Downstream delegation (programs lowered by a delegating runtime)",
            ["check", "consumer", "delegates"],
            delegate_rows,
        ),
        (
            "Warnings raised while goldens loaded and ran (recorded, not judged)",
            ["consumer", "raised at", "category", "message", "checks", "e.g."],
            warning_rows,
        ),
        ("Summary", ["consumer", *states], summary),
        ("Consumers", consumer_head, consumer_rows),
        ("Coverage: formats per golden and producer", cov_head, cov_body),
        (
            "Checks that run code on load",
            ["check"],
            [[c] for c in code_checks],
        ),
    ]
    note = (
        f"Formats whose loader runs code from the golden: {', '.join(code_formats)}; such "
        "checks (last table) load only inside the sandbox (harness.sandbox). Trusted without "
        f"a sandbox (--trust): {', '.join(trusted) or 'none'}."
    )
    legend = (
        "Outcomes: ok = passed, FAIL = regression, xfail = known break (reason below), "
        "XPASS = a known break now passes, skip = cannot run on that consumer."
        + (
            " approx = passed across ISA classes by the policy's measured ISA rules (the "
            "consumer could neither compute in the golden's class nor cap itself to it)."
            if with_isa
            else ""
        )
    )
    if fmt == "md":
        generated = (
            "Generated by `qbc report --format md` from `qbc verify --json` results "
            "(one file per consumer); do not edit by hand, regenerate."
        )
        out = ["# qbc report", "", generated, "", legend, "", note, ""]
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
        return _html(sections, matrix_title, drift_title, legend, note, drift_points(results))
    raise ValueError(f"unknown report format {fmt!r}; known: md, html, json, results")


def _html(
    sections: list[tuple[str, list[str], list[list[str]]]],
    matrix_title: str,
    drift_title: str,
    legend: str,
    note: str,
    points: list[DriftPoint],
) -> str:
    # One self-contained file: inline style and SVG, no script, no external reference.
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>qbc report</title>",
        "<style>body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:2px 6px}td.bad{background:#fcc}"
        "td.known{background:#ffe9b3}</style></head><body>",
        "<h1>qbc report</h1>",
        f"<p>{html.escape(legend)}</p>",
    ]
    ids = {matrix_title: " id='matrix'"}
    for title, head_, rows_ in sections:
        if title == drift_title:
            out.append(
                "<h2>Drift: max error in quantization steps per case and producer "
                "(failed checks in red, against their policy limit)</h2>"
            )
            out.append(drift_svg(points))
        if title.startswith("Checks that run code"):
            out.append(f"<p>{html.escape(note)}</p>")
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
