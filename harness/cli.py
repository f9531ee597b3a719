"""``qbc`` command line: cases, engines, generate, verify, report, diff.

    qbc cases [--subject S]
    qbc engines [--subject S]
    qbc generate [--subject S] [--case GLOB] [--engine E ...] [--out golden/]
    qbc verify [--store golden/] [-k EXPR] [-n N] [--json PATH]   # the main job
    qbc report --format md|html|json [--store golden/] [--results PATH ...] [-o FILE]
    qbc diff GOLDEN_A GOLDEN_B

``verify`` runs the pytest runner (harness/verify.py with the qbc plugin) over the store,
prints the compatibility matrix and exits nonzero on any regression (a failed check, or an
unexpected pass of a known break).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def _subjects(args: argparse.Namespace) -> list[str]:
    from harness.subjects import get_subject, subject_names

    if getattr(args, "subject", None):
        get_subject(args.subject)  # raises UnknownName naming it
        return [args.subject]
    return subject_names()


def cmd_cases(args: argparse.Namespace) -> int:
    from harness.subjects import get_subject

    for name in _subjects(args):
        subject = get_subject(name)
        for case in subject.cases():
            engines = ",".join(case.engines or subject.engines())
            print(f"{name}/{case.name}\tengines={engines}\tformats={','.join(case.formats)}")
    return 0


def cmd_engines(args: argparse.Namespace) -> int:
    from harness.subjects import get_subject

    for name in _subjects(args):
        subject = get_subject(name)
        for engine in subject.engines():
            reason = subject.unavailable_reason(engine)
            print(f"{name}/{engine}\t{'available' if reason is None else 'unavailable: ' + reason}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from harness.generate import generate

    result = generate(
        Path(args.out),
        subjects=_subjects(args),
        case_glob=args.case,
        engines=args.engine,
        command=" ".join(["qbc", *sys.argv[1:]]),
        progress=True,
    )
    for gid, reason in result.skipped:
        print(f"skipped {gid}: {reason}")
    print(
        f"wrote {len(result.written)} goldens into {', '.join(map(str, result.producer_dirs)) or '(nothing)'}"
    )
    return 0


class _Progress:
    """pytest plugin object: a tqdm bar over the checks (works with and without xdist)."""

    def __init__(self) -> None:
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (CI logs stay readable)
        self.bar = tqdm(desc="verify", unit="check", file=sys.stderr, disable=None)

    def pytest_collection_finish(self, session: Any) -> None:
        self.bar.total = len(session.items)
        self.bar.refresh()

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.bar.total = len(ids)
        self.bar.refresh()

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.bar.update(1)

    def pytest_sessionfinish(self, session: Any) -> None:
        self.bar.close()


def run_verify(
    store: Path,
    expr: str | None,
    workers: str,
    results: Path,
    progress: bool = True,
    junitxml: str | None = None,
) -> int:
    """Run the pytest runner over ``store``; outcomes land in ``results`` (JSON)."""
    import importlib.util

    import pytest

    # The test module's path without importing it: this process only controls the workers
    # (with -n), and importing the runner would import torch here for nothing.
    verify_py = importlib.util.find_spec("harness.verify").origin  # type: ignore[union-attr]
    args = [
        str(verify_py),
        "--qbc-store",
        str(store),
        "--qbc-results",
        str(results),
        "-p",
        "no:cacheprovider",
        # The same run wherever qbc is installed (editable, wheel) and whichever directory it
        # is started from: no project's pytest configuration (its addopts, its
        # filterwarnings = error) or conftest.py applies to the verification of a store.
        "-c",
        os.devnull,
        "--rootdir",
        os.getcwd(),
        "--confcutdir",
        str(Path(verify_py).parent),
        "-qq",
        "--tb=no",
        "--no-header",
        # qbc is already imported here: assertion rewriting of it is neither possible nor needed
        "--assert=plain",
    ]
    if workers not in ("0", ""):
        args += ["-n", workers, "--dist", "loadgroup"]
    if expr:
        args += ["-k", expr]
    if junitxml:
        args += ["--junitxml", junitxml]
    plugins = [_Progress()] if progress else []
    with open(os.devnull, "w") as devnull:
        stdout = sys.stdout
        sys.stdout = devnull  # pytest's own dots; the matrix below is the output
        try:
            code = pytest.main(args, plugins=plugins)
        finally:
            sys.stdout = stdout
    return int(code)


def _load_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a results file: a list of rows, or (compact, as in docs/compat/) a dict
    ``{"consumer": {...}, "rows": [...]}`` whose rows all come from that one consumer."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        from harness.report import expand_compact

        return expand_compact(data)
    return data


def cmd_verify(args: argparse.Namespace) -> int:
    from harness.report import matrix as build_matrix
    from harness.report import render_text

    store = Path(args.store)
    if not store.is_dir():
        print(f"qbc verify: no golden store at {store}", file=sys.stderr)
        return 2
    from harness.store import iter_goldens

    if not iter_goldens(store):
        print(
            f"qbc verify: the golden store {store} is empty (no "
            "<subject>/<producer>/<engine>/<case>/ folder): nothing to verify",
            file=sys.stderr,
        )
        return 2
    if args.no_isolation:
        # Loads run in the runner process itself (inherited by xdist workers): about half the
        # time, but a native crash in a loader ends the run. For reviewed, committed stores.
        os.environ["QBC_ISOLATION"] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(args.json) if args.json else Path(tmp) / "results.json"
        code = run_verify(store, args.k, args.n, results, junitxml=args.junitxml)
        rows = _load_rows(results)
    print(render_text(build_matrix(rows)))
    bad = [r for r in rows if r["outcome"] in ("failed", "xpass")]
    for r in bad:
        print(f"\n{r['outcome'].upper()} {r['id']}\n{r['message']}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    from harness.report import warning_summary

    said = warning_summary(rows)
    if said:
        # recorded, never judged: what torch (or other code) said while goldens loaded and ran
        print(f"\nwarnings raised during checks (recorded, not judged): {len(said)} distinct")
        for w in said:
            print(f"  {len(w['checks'])} checks: {w['origin']} {w['category']}: {w['message']}")
    print("\n" + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no checks"))
    if code == 5 and not rows:  # nothing collected
        return 0 if args.k else 1
    return 1 if bad or code not in (0, 5) else 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report import render

    store = Path(args.store)
    with tempfile.TemporaryDirectory() as tmp:
        if args.results:
            # one results file per consumer; their rows name the consumer that wrote them
            rows = [row for path in args.results for row in _load_rows(Path(path))]
        else:
            results = Path(tmp) / "results.json"
            run_verify(store, None, args.n, results)
            rows = _load_rows(results)
    text = render(args.format, rows, store)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from harness.diff import diff_goldens

    report, same = diff_goldens(Path(args.a), Path(args.b))
    print(report)
    return 0 if same else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qbc", description="backward-compatibility harness for quantized PyTorch models"
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("cases", help="list the case catalogue")
    s.add_argument("--subject")
    s.set_defaults(func=cmd_cases)

    s = sub.add_parser("engines", help="list engines and whether they run here")
    s.add_argument("--subject")
    s.set_defaults(func=cmd_engines)

    s = sub.add_parser("generate", help="write the current producer's goldens")
    s.add_argument("--subject")
    s.add_argument("--case", help="glob over case names")
    s.add_argument("--engine", action="append", help="engine (repeatable)")
    s.add_argument("--out", default="golden", help="store root (default: golden)")
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("verify", help="verify the store; print the compatibility matrix")
    s.add_argument("--store", default="golden")
    s.add_argument("-k", help="pytest -k expression over check ids")
    s.add_argument("-n", default="auto", help="xdist workers (0: in process; default auto)")
    s.add_argument("--json", help="also write every check's outcome here")
    s.add_argument("--junitxml", help="also write a JUnit XML report of every check here")
    s.add_argument(
        "--no-isolation",
        action="store_true",
        help="load goldens in-process instead of a forked child per load (faster; for trusted stores)",
    )
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("report", help="matrix, drift and coverage report")
    # results: one consumer's outcomes in the compact form committed under docs/compat/
    s.add_argument("--format", choices=["md", "html", "json", "results"], default="md")
    s.add_argument("--store", default="golden")
    s.add_argument(
        "--results",
        action="append",
        help="outcomes JSON from `qbc verify --json`, repeatable: one per consumer "
        "(default: run verify here)",
    )
    s.add_argument("-n", default="auto")
    s.add_argument("-o", "--output")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("diff", help="compare two golden folders")
    s.add_argument("a", metavar="GOLDEN_A")
    s.add_argument("b", metavar="GOLDEN_B")
    s.set_defaults(func=cmd_diff)
    return p


def main(argv: list[str] | None = None) -> int:
    from harness.outcomes import UnknownName

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UnknownName as exc:
        print(f"qbc: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:  # unknown case glob etc.
        print(f"qbc: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
