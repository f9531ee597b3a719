"""``qbc`` command line: cases, engines, generate, regen, verify, report, diff.

    qbc cases   [--subject S] [--json]
    qbc engines [--subject S] [--json]
    qbc generate [--subject S] [--case GLOB] [--engine E ...] [--out golden/]
    qbc regen [--store golden/] [--subject S] [--case GLOB] [--engine E] [--check]
    qbc verify [--store golden/] [-k EXPR] [-n N] [--json F] [--policy F] [--known-breaks F]
               [--downstream all|none|NAMES] [--downstream-producers all|span|current]
    qbc report --format md|html|json|results [--store golden/] [--results F ...] [-o FILE]
    qbc diff GOLDEN_A GOLDEN_B

``verify`` (the main job) runs the pytest runner (harness/verify.py with the qbc plugin) over
the store, shows progress on a terminal, prints the compatibility matrix, the regressions
grouped by (subject, engine, case, cause) and a final line with the counts and the duration.

Exit status, as pytest's: 0 all good; 1 a regression (a failed check, or a known break that now
passes; ``diff``: the goldens differ); 2 a usage error or something missing or unreadable (a
store, a results file, a golden), named in a one-line message; 5 nothing to check (``-k``
matched nothing, or the store holds no goldens).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import harness
from harness import results as rs
from harness.scope import SCOPES

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, EXIT_NOTHING = 0, 1, 2, 5

#: below this many checks, ``-n auto`` verifies in process: a worker imports torch and harness and
#: builds today's cases again. bench/cli_workers.py, 2 cores (load 13): 17 checks, two workers
#: cost 1.8x the CPU of one process; 188 checks, 1.5x the CPU and 1.10x the wall time; 552
#: checks, 1.47x the CPU and 0.72x the wall time
PARALLEL_MIN_CHECKS = 200


class UserError(Exception):
    """A mistake or a missing thing the user can fix; printed as ``qbc <command>: <message>``."""


# ------------------------------------------------------------------------------ catalogue


def _subjects(args: argparse.Namespace) -> list[str]:
    from harness.subjects import get_subject, subject_names

    if getattr(args, "subject", None):
        get_subject(args.subject)  # raises UnknownName naming it
        return [args.subject]
    return subject_names()


def cmd_cases(args: argparse.Namespace) -> int:
    from harness.subjects import get_subject

    rows = []
    for name in _subjects(args):
        subject = get_subject(name)
        for case in subject.cases():
            engines = case.engines or subject.engines()
            rows.append(
                {
                    "subject": name,
                    "case": case.name,
                    "description": case.description,
                    # formats_by_engine: native engines of qbc write no TorchScript, for one
                    "formats": {e: list(case.formats_for(e)) for e in engines},
                }
            )
    if args.json:
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    for row in rows:
        by_formats: dict[tuple[str, ...], list[str]] = {}
        for engine, fmts in row["formats"].items():
            by_formats.setdefault(tuple(fmts), []).append(engine)
        parts = [
            f"engines={','.join(engines)}\tformats={','.join(fmts)}"
            for fmts, engines in by_formats.items()
        ]
        print(f"{row['subject']}/{row['case']}\t" + "\t".join(parts))
    return EXIT_OK


def cmd_engines(args: argparse.Namespace) -> int:
    from harness.subjects import get_subject

    rows = []
    for name in _subjects(args):
        subject = get_subject(name)
        for engine in subject.engines():
            reason = subject.unavailable_reason(engine)
            rows.append(
                {"subject": name, "engine": engine, "available": reason is None, "reason": reason}
            )
    if args.json:
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    for r in rows:
        state = "available" if r["available"] else f"unavailable: {r['reason']}"
        print(f"{r['subject']}/{r['engine']}\t{state}")
    return EXIT_OK


# ------------------------------------------------------------------------------ writing goldens


def cmd_generate(args: argparse.Namespace) -> int:
    from harness import regen

    ns = argparse.Namespace(
        store=args.out,
        subject=[args.subject] if args.subject else None,
        producer=None,
        check=False,
        case=args.case,
        engine=args.engine,
    )
    return regen.run(ns, prog="qbc generate")


def cmd_regen(args: argparse.Namespace) -> int:
    from harness import regen

    return regen.run(args, prog="qbc regen")


# ------------------------------------------------------------------------------ verify


#: a downstream check's id ends ``.../exported@<consumer>]`` (harness.verify.CheckItem.id)
_DOWNSTREAM_ID = re.compile(r"/exported@([A-Za-z0-9_.-]+)\]$")


def xdist_scope(nodeid: str) -> str:
    """The xdist work unit of a check in ``qbc verify``: every downstream check of one consumer
    is one unit (it runs on one worker), any other check is a unit of its own.

    One worker per consumer starts that consumer's worker process (torch, the runtime and a
    warm-up lowering: 4-15 CPU s, Inductor's most) once per run instead of once per xdist
    worker; Inductor kernels shared by several goldens compile once; a program that loads the
    same from two producers is lowered once (harness.downstream's memo). The units are handed
    out largest first, so the consumers' units start the run and the single checks fill in
    around them (no consumer left for the end, when one worker would run it alone)."""
    match = _DOWNSTREAM_ID.search(nodeid)
    return f"downstream:{match[1]}" if match else nodeid


class _ConsumerGroups:
    """pytest plugin object (the xdist controller of ``qbc verify`` with downstream checks):
    schedules work units by :func:`xdist_scope`.

    Not ``--dist loadgroup`` and ``xdist_group`` marks: with pytest 9 and pytest-xdist 3.8 those
    group nothing (xdist renames ``item._nodeid``, which pytest 9 no longer reads; measured:
    checks of one group ran on both workers), so loadgroup hands out every check alone.
    """

    @staticmethod
    def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
        from xdist.scheduler import LoadScopeScheduling

        class ConsumerScheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return xdist_scope(nodeid)

        return ConsumerScheduling(config, log)


class _Progress:
    """pytest plugin object: a bar over the checks on the terminal (works with and without
    xdist), and the outcome counts for the final line.

    ``stream`` is the terminal as it was before pytest started: pytest's capture replaces the
    process's stderr while it runs, which is why a bar on sys.stderr never showed.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.bar: Any = None
        self.total = 0

    def _start(self, total: int) -> None:
        self.total = total
        if self.stream is None or total == 0:
            return
        from tqdm import tqdm

        try:  # a terminal that reports no size (a bare pty) still gets a bar
            columns = os.get_terminal_size(self.stream.fileno()).columns or 80
        except OSError:
            columns = 80
        self.bar = tqdm(
            total=total, desc="qbc verify", unit="check", file=self.stream, ncols=columns
        )

    def pytest_collection_finish(self, session: Any) -> None:
        if not hasattr(session.config, "workerinput") and session.items:
            self._start(len(session.items))

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self.bar is None:
            self._start(len(ids))

    def pytest_runtest_logreport(self, report: Any) -> None:
        done = report.when == "call" or (report.when == "setup" and report.outcome != "passed")
        if done and self.bar is not None:
            self.bar.update(1)

    def pytest_sessionfinish(self, session: Any) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def _terminal_stderr() -> Iterator[TextIO | None]:
    """A handle on the terminal behind stderr (a duplicate of fd 2), when it is a terminal."""
    try:
        tty = os.isatty(sys.stderr.fileno())
    except (AttributeError, ValueError, io.UnsupportedOperation):
        tty = False
    if not tty:
        yield None
        return
    stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    try:
        yield stream
    finally:
        stream.close()


def count_checks(store: Path) -> int:
    """How many checks ``qbc verify`` would collect (manifests only; no torch)."""
    from harness.store import iter_goldens

    return sum(max(len(g.formats), 1) for g in iter_goldens(store))


def workers_for(requested: str, checks: int) -> str:
    """``-n`` for pytest-xdist: ``auto`` means in process below PARALLEL_MIN_CHECKS checks."""
    if requested == "auto" and checks < PARALLEL_MIN_CHECKS:
        return "0"
    return requested


def run_verify(
    store: Path,
    expr: str | None,
    workers: str,
    results: Path,
    progress: TextIO | None = None,
    junitxml: str | None = None,
    policy: str | None = None,
    known_breaks: str | None = None,
    subjects: list[str] | None = None,
    downstream: str = "all",
    downstream_producers: str = "all",
) -> tuple[int, str]:
    """Run the pytest runner over ``store`` in process; outcomes land in ``results`` (JSON).
    ``downstream``: the consumers that also check every exported golden (``--qbc-downstream``:
    comma-separated names, ``all``, or ``none``) of the producers in ``downstream_producers``
    (a harness.scope name: ``all``, ``span`` or ``current``).

    Returns pytest's exit code and what pytest printed (shown only when it could not run).
    """
    import importlib.util

    import pytest

    # The test module's path without importing it: with -n this process only controls the
    # workers, and importing the runner would import torch here for nothing.
    verify_py = importlib.util.find_spec("harness.verify").origin  # type: ignore[union-attr]
    args = [
        str(verify_py),
        # The same run wherever qbc is installed (editable, wheel) and whichever directory it
        # is started from: no project's pytest configuration (its addopts, its
        # filterwarnings = error) or conftest.py applies to the verification of a store.
        "-c", os.devnull, "--rootdir", os.getcwd(), "--confcutdir", str(Path(verify_py).parent),
        "--qbc-store", str(store),
        "--qbc-results", str(results),
        "-p", "no:cacheprovider",
        "-qq", "--tb=no", "--no-header",
        # qbc is already imported here: assertion rewriting of it is neither possible nor needed
        "--assert=plain",
    ]  # fmt: skip
    plugins: list[Any] = [_Progress(progress)]
    if workers not in ("0", ""):
        args += ["-n", workers]
        if downstream and downstream != "none":
            # one worker per downstream consumer (_ConsumerGroups' scheduler replaces xdist's
            # own whatever --dist says). No "--dist loadgroup" beside it: where loadgroup works
            # (pytest 8) xdist appends each check's xdist_group to its node id, and the ids
            # would no longer end as xdist_scope expects. Without downstream checks: "load".
            plugins.append(_ConsumerGroups())
    for flag, value in (("-k", expr), ("--junitxml", junitxml), ("--qbc-policy", policy)):
        if value:
            args += [flag, value]
    if junitxml:
        # xunit1 keeps each check's <properties> (its id, drift, sandbox): xunit2 drops them
        args += ["-o", "junit_family=xunit1"]
    if known_breaks:
        args += ["--qbc-known-breaks", known_breaks]
    for subject in subjects or ():
        args += ["--qbc-subject", subject]
    if downstream and downstream != "none":
        args += ["--qbc-downstream", downstream]
        args += ["--qbc-downstream-producers", downstream_producers]
    out = io.StringIO()
    stdout = sys.stdout
    sys.stdout = out  # pytest's own lines; the matrix and summary below are the output
    try:
        code = pytest.main(args, plugins=plugins)
    finally:
        sys.stdout = stdout
    return int(code), out.getvalue()


def _existing_file(path: str | None, what: str) -> str | None:
    if path is not None and not Path(path).is_file():
        raise UserError(f"{what} {path} does not exist")
    return path


def _writable(path: str | None, option: str) -> None:
    if path is not None and not Path(path).parent.is_dir():
        raise UserError(f"{option} {path}: directory {Path(path).parent} does not exist")


def _counts_line(results: list[rs.CheckResult], seconds: float) -> str:
    """``1 failed, 3650 passed, 26 approx, 12 xfail in 80.1s``: ``approx`` (passed across ISA
    classes by the policy's ISA rules) is counted apart from ``passed``."""
    order = ("failed", "xpass", "passed", "approx", "xfail", "skipped")
    counts = {o: sum(_state(r) == o for r in results) for o in order}
    text = ", ".join(f"{n} {o}" for o, n in counts.items() if n) or "no checks"
    return f"{text} in {seconds:.1f}s"


def _state(r: rs.CheckResult) -> str:
    return "approx" if r.outcome == "passed" and r.verdict == "approx" else r.outcome


def _isa_line(results: list[rs.CheckResult]) -> str:
    """How the ISA classes were compared: ``ISA: this machine avx512_vnni; checks compared
    exact 3600, capped 52, approx 26`` (harness.verify.isa_plan)."""
    from harness import isa

    modes = {m: sum((r.isa or {}).get("mode") == m for r in results) for m in isa.MODES}
    how = ", ".join(f"{m} {n}" for m, n in modes.items() if n)
    return f"ISA: this machine {isa.detect().describe()}" + (
        f"; checks compared {how}" if how else ""
    )


def cmd_verify(args: argparse.Namespace) -> int:
    from harness.report import failure_groups, render_failure_groups, render_text, warning_summary
    from harness.report import matrix as build_matrix

    store = Path(args.store)
    if not store.is_dir():
        raise UserError(f"no golden store at {store} (--store)")
    _existing_file(args.policy, "policy file")
    _existing_file(args.known_breaks, "known-breaks file")
    _writable(args.json, "--json")
    _writable(args.junitxml, "--junitxml")
    for name in args.subject or ():
        from harness.subjects import get_subject

        get_subject(name)
    checks = count_checks(store)
    if checks == 0:
        print(
            f"qbc verify: the golden store {store} holds no goldens "
            "(no <subject>/<producer>/<engine>/<case>/ folder): nothing to verify",
            file=sys.stderr,
        )
        return EXIT_NOTHING
    if args.no_isolation:
        # Loads run in the runner process itself (inherited by xdist workers): about half the
        # time, but a native crash in a loader ends the run. For reviewed, committed stores.
        os.environ["QBC_ISOLATION"] = "0"
    if args.trust:
        # code-capable formats load even where no sandbox works (inherited by xdist workers);
        # the summary lists them
        os.environ["QBC_TRUST"] = "1"
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, _terminal_stderr() as terminal:
        path = Path(args.json) if args.json else Path(tmp) / "results.json"
        code, pytest_output = run_verify(
            store,
            args.k,
            workers_for(args.n, checks),
            path,
            progress=terminal if args.verbosity >= 0 else None,
            junitxml=args.junitxml,
            policy=args.policy,
            known_breaks=args.known_breaks,
            subjects=args.subject,
            downstream=args.downstream,
            downstream_producers=args.downstream_producers,
        )
        results = rs.read_results(path) if path.exists() else []
    seconds = time.monotonic() - start
    if code in (2, 3, 4) and not results:  # pytest could not run: say why, as pytest said it
        sys.stderr.write(pytest_output)
        return EXIT_USAGE if code != 3 else code
    if not results:
        what = f"no check matches -k {args.k!r}" if args.k else "no checks collected"
        print(f"qbc verify: {what} ({checks} checks in {store})", file=sys.stderr)
        return EXIT_NOTHING
    bad = [r for r in results if r.bad]
    # as pytest: every failure in full first, then what must stay on screen: the matrix, the
    # regressions grouped by cause, and the counts
    if args.verbosity >= 0:
        for r in bad:
            print(f"{r.outcome.upper()} {r.id}\n{r.message}\n")
        print(render_text(build_matrix(results)))
    said = warning_summary(results)
    if said and args.verbosity >= 0:
        # recorded, never judged: what torch (or other code) said while goldens loaded and ran
        print(f"\nwarnings raised during checks (recorded, not judged): {len(said)} distinct")
        for w in said:
            print(f"  {len(w['checks'])} checks: {w['origin']} {w['category']}: {w['message']}")
    boxes = sorted(
        {r.sandbox for r in results if r.sandbox and not r.sandbox.startswith("trusted")}
    )
    trusted = sorted(r.id for r in results if (r.sandbox or "").startswith("trusted"))
    if args.verbosity >= 0:
        for box in boxes:
            print(f"\ncode-capable loads ran in the sandbox: {box}")
    if trusted:  # always said: these ran code from the golden without a sandbox
        print(f"\nTRUSTED without a sandbox (--trust), {len(trusted)} checks:")
        print("\n".join(f"  {t}" for t in trusted))
    if bad and args.verbosity >= -1:
        print(
            ("\n" if args.verbosity >= 0 else "") + render_failure_groups(failure_groups(results))
        )
    if args.verbosity >= 0:
        print("\n" + _isa_line(results))
    print(("\n" if args.verbosity >= -1 else "") + _counts_line(results, seconds))
    return EXIT_REGRESSION if bad or code not in (0, 5) else EXIT_OK


# ------------------------------------------------------------------------------ report, diff


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report import render

    store = Path(args.store)
    _writable(args.output, "-o")
    if args.results:
        # one results file per consumer; their rows name the consumer that wrote them
        results = [r for path in args.results for r in rs.read_results(Path(path))]
    else:
        if not store.is_dir():
            raise UserError(f"no golden store at {store} (--store)")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "results.json"
            code, output = run_verify(store, None, workers_for(args.n, count_checks(store)), path)
            if code in (2, 3, 4):
                sys.stderr.write(output)
                return EXIT_USAGE
            results = rs.read_results(path) if path.exists() else []
    if not results:
        print("qbc report: no check results to report", file=sys.stderr)
        return EXIT_NOTHING
    text = render(args.format, results, store)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from harness.diff import diff_goldens
    from harness.outcomes import IntegrityError

    for path in (args.a, args.b):
        if not (Path(path) / "manifest.json").is_file():
            raise UserError(f"{path} is not a golden folder (no manifest.json there)")
    try:
        report, same = diff_goldens(Path(args.a), Path(args.b))
    except IntegrityError as exc:
        raise UserError(str(exc)) from None
    print(report)
    return EXIT_OK if same else EXIT_REGRESSION


# ------------------------------------------------------------------------------ parser, main


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch = version("torch")
    except PackageNotFoundError:
        torch = "not installed"
    return f"qbc {harness.__version__} (torch {torch})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qbc", description="backward-compatibility harness for quantized PyTorch models"
    )
    p.add_argument("--version", action="version", version=_version())
    # -q / -v on every command, after its name: ``qbc verify -q``
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="say more")
    verbosity.add_argument("-q", "--quiet", action="count", default=0, help="say less")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[verbosity])

    s = command("cases", "list the case catalogue (engines and the formats each writes)")
    s.add_argument("--subject")
    s.add_argument("--json", action="store_true", help="as JSON")
    s.set_defaults(func=cmd_cases)

    s = command("engines", "list engines and whether they run here")
    s.add_argument("--subject")
    s.add_argument("--json", action="store_true", help="as JSON")
    s.set_defaults(func=cmd_engines)

    s = command("generate", "write today's goldens and say what changed (qbc regen, into --out)")
    s.add_argument("--subject", help="default: the subjects already in the store")
    s.add_argument("--case", help="glob over case names")
    s.add_argument("--engine", action="append", help="engine (repeatable)")
    s.add_argument("--out", default="golden", help="store root (default: golden)")
    s.set_defaults(func=cmd_generate)

    from harness.regen import add_arguments

    s = command("regen", "regenerate today's goldens, or check that it is deterministic")
    add_arguments(s)
    s.set_defaults(func=cmd_regen)

    s = command("verify", "verify the store; print the matrix and what regressed")
    s.add_argument("--store", default="golden", help="golden store (default: golden)")
    s.add_argument("-k", help="pytest -k expression over check ids")
    s.add_argument(
        "-n",
        default="auto",
        help="xdist workers (0: in process; auto: one per core when the store is large enough)",
    )
    s.add_argument("--subject", action="append", help="only this subject's goldens (repeatable)")
    s.add_argument("--policy", help="tolerance policy TOML (default: qbc's own)")
    s.add_argument("--known-breaks", help="known-breaks TOML (default: qbc's own)")
    s.add_argument("--json", help="also write every check's result here")
    s.add_argument("--junitxml", help="also write a JUnit XML report of every check here")
    s.add_argument(
        "--no-isolation",
        action="store_true",
        help="load goldens in-process instead of a forked child per load (faster; for trusted stores)",
    )
    s.add_argument(
        "--trust",
        action="store_true",
        help="load formats that can run code (TorchScript, package, trusted pickles) even where "
        "no sandbox works here; they are listed as trusted (default: skipped with the reason)",
    )
    s.add_argument(
        "--downstream",
        default="all",
        help="downstream consumers that also lower and run every exported golden: "
        "comma-separated (executorch, executorch_xnnpack, onnxruntime, inductor, "
        "inductor_freezing), 'all' (default) or 'none'; without the downstream extra they "
        "are skipped with the install command",
    )
    s.add_argument(
        "--downstream-producers",
        choices=SCOPES,
        default="all",
        help="whose exported goldens the downstream consumers lower: every producer's (all, the "
        "default), today's, the oldest and newest past producer's and the newest of each qbc "
        "version (span), or today's producer's only (current; what CI does: lowering costs "
        "seconds per golden)",
    )
    s.set_defaults(func=cmd_verify)

    s = command("report", "matrix, what broke, drift and coverage report")
    # results: one consumer's outcomes in the compact form committed under docs/compat/
    s.add_argument("--format", choices=["md", "html", "json", "results"], default="md")
    s.add_argument("--store", default="golden")
    s.add_argument(
        "--results",
        action="append",
        help="results JSON from `qbc verify --json`, repeatable: one per consumer "
        "(default: run verify here)",
    )
    s.add_argument("-n", default="auto")
    s.add_argument("-o", "--output")
    s.set_defaults(func=cmd_report)

    s = command("diff", "compare the contents of two golden folders (exit 1 when they differ)")
    s.add_argument("a", metavar="GOLDEN_A")
    s.add_argument("b", metavar="GOLDEN_B")
    s.set_defaults(func=cmd_diff)
    return p


def main(argv: list[str] | None = None) -> int:
    from harness.lock import RegenLocked
    from harness.outcomes import ManifestProblem, UnknownName
    from harness.subjects import SubjectProblem

    args = build_parser().parse_args(argv)
    args.verbosity = args.verbose - args.quiet
    prog = f"qbc {args.command}"
    try:
        return args.func(args)
    except (
        UserError,
        UnknownName,
        SubjectProblem,
        rs.ResultsProblem,
        ManifestProblem,
        RegenLocked,
    ) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyError as exc:  # unknown case glob etc.
        print(f"{prog}: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # `qbc report | head`: the reader left; say nothing more (Python's documented recipe)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # as a process killed by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
