"""pytest plugin ``qbc`` (entry point ``pytest11``): one test per golden check of the store.

Any test requesting the ``qbc_check`` fixture (``harness.verify.test_golden``; a project's
CI gate is the one line ``from harness.verify import test_golden`` in a test file) runs once per
(golden, format) of the store, with ids like ``torch_ao/torch-2.13.0_qbc-0.1.0/fbgemm/linear/scripted``,
marked ``qbc`` (``-m qbc`` / ``-m "not qbc"``). A check covered by an entry of the known-breaks file must
fail the way the entry says (an xfail carrying its name and reason); failing otherwise is a
failure, passing is an XPASS that fails the run. Warnings raised during a check are recorded in
its results row, never raised. Collection is deterministic, so pytest-xdist workers agree on the
item list.

Options (command line, or the ini key in ``[tool.pytest.ini_options]``; a relative ini path is
relative to the ini file):

  --qbc-store PATH          qbc_store          golden store (default: <rootdir>/golden)
  --qbc-policy PATH         qbc_policy         tolerance policy TOML (default: qbc's own)
  --qbc-known-breaks PATH   qbc_known_breaks   known-breaks TOML (default: qbc's own)
  --qbc-subject NAME        qbc_subjects       only these subjects' goldens (repeatable)
  --qbc-producers SCOPE     qbc_producers      which producers' goldens: ``all`` (default),
                            ``span`` (today's, the oldest and newest past producer, the newest
                            of each code version) or ``current`` (today's): harness.scope
  --qbc-update                                 accept today's goldens before checking (below)
  --qbc-results PATH                           write every check's outcome as JSON
  --qbc-downstream LIST                        also check every exported golden with these
                            downstream consumers (harness.downstream: comma-separated names, or
                            ``all``; default none, lowering costs seconds per golden; ``qbc
                            verify`` runs all)
  --qbc-downstream-producers SCOPE             which producers' exported goldens the downstream
                            consumers check (``all``, the default; ``span``; ``current``)
  --qbc-torch-threads N                        torch intra-op threads in a process that runs
                            golden checks (default 1; 0 keeps torch's default). Goldens are
                            tiny: extra threads only add synchronization (bench/README.md).

Accepting an intended change, the syrupy way: ``pytest --qbc-update`` (or syrupy's
``--snapshot-update``) regenerates today's producer of every subject in scope before the checks
are collected, prints what changed (goldens added, changed, unchanged, removed, and the largest
change of an expected output, in quantization steps), and then verifies the store as usual.
Past producers are never rewritten: their failures remain, to be fixed or recorded as known
breaks.

A session that collects no golden check pays only for importing this module (no torch). A
missing store is a collection error naming it; a store without goldens collects nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import results as rs
from harness.scope import DEFAULT as DEFAULT_SCOPE
from harness.scope import SCOPES

FIXTURE = "qbc_check"
MARKER = "qbc"

#: per-config state, shared by the hooks below (pytest's own plugins keep theirs the same way)
_STATE = pytest.StashKey["_State"]()
_WRITER = pytest.StashKey["ResultsWriter"]()


class _State:
    def __init__(self, run_id: str) -> None:
        #: one id per pytest run, shared with xdist workers, naming the accept record
        self.run_id = run_id
        self.accepted = False
        self.empty_store: Path | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qbc", "qbc golden store")
    group.addoption("--qbc-store", default=None, help="golden store (default: <rootdir>/golden)")
    group.addoption("--qbc-policy", default=None, help="tolerance policy TOML")
    group.addoption("--qbc-known-breaks", default=None, help="known-breaks TOML")
    group.addoption(
        "--qbc-subject",
        action="append",
        default=None,
        help="verify (and accept) only this subject's goldens (repeatable)",
    )
    group.addoption(
        "--qbc-producers",
        choices=SCOPES,
        default=None,
        help="which producers' goldens to check: all (default), span (today's, the oldest and "
        "newest past producer, the newest of each code version) or current (today's only)",
    )
    group.addoption(
        "--qbc-update",
        action="store_true",
        default=False,
        help="accept: regenerate today's goldens of the subjects in scope, print what changed",
    )
    group.addoption("--qbc-results", default=None, help="write check outcomes as JSON here")
    group.addoption(
        "--qbc-trust",
        action="store_true",
        help="load code-capable formats even where no sandbox works (listed as trusted)",
    )
    group.addoption(
        "--qbc-downstream",
        default="",
        help="downstream consumers that also check every exported golden: comma-separated "
        "names (executorch, executorch_xnnpack, onnxruntime, inductor, inductor_freezing) or "
        "'all' (default: none)",
    )
    group.addoption(
        "--qbc-downstream-producers",
        choices=SCOPES,
        default=DEFAULT_SCOPE,
        help="which producers' exported goldens the downstream consumers check (default all)",
    )
    group.addoption(
        "--qbc-torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads while running golden checks (default 1; 0: torch's default)",
    )
    parser.addini("qbc_store", "golden store (default: <rootdir>/golden)", type="paths")
    parser.addini("qbc_policy", "tolerance policy TOML (default: qbc's own)", type="paths")
    parser.addini("qbc_known_breaks", "known-breaks TOML (default: qbc's own)", type="paths")
    parser.addini("qbc_subjects", "verify only these subjects' goldens", type="args")
    parser.addini(
        "qbc_producers", f"which producers' goldens to check: {', '.join(SCOPES)}", default=""
    )


def _path_setting(config: pytest.Config, name: str) -> Path | None:
    """Command line first, then the ini file (relative to it), else None."""
    opt = config.getoption(f"--{name.replace('_', '-')}")
    if opt:
        return Path(opt)
    ini = config.getini(name)
    return Path(ini[0]) if ini else None


def store_path(config: pytest.Config) -> Path:
    # Absolute: sandboxed loads run in a child whose working directory is its scratch folder,
    # where a store path relative to the invocation would name nothing.
    return (_path_setting(config, "qbc_store") or Path(config.rootpath) / "golden").absolute()


def subjects_in_scope(config: pytest.Config) -> list[str]:
    """The subjects named by ``--qbc-subject`` / ``qbc_subjects``; empty: every subject."""
    return list(config.getoption("--qbc-subject") or config.getini("qbc_subjects") or [])


def producers_in_scope(config: pytest.Config) -> str:
    """The producer scope of the golden checks: ``--qbc-producers``, else ``qbc_producers``,
    else every producer (harness.scope)."""
    name = config.getoption("--qbc-producers") or config.getini("qbc_producers") or DEFAULT_SCOPE
    if name not in SCOPES:
        raise pytest.UsageError(f"qbc_producers = {name!r}: known scopes are {', '.join(SCOPES)}")
    return name


def _update_requested(config: pytest.Config) -> bool:
    # syrupy's flag accepts snapshots; it accepts goldens too when golden checks are collected
    return bool(
        config.getoption("--qbc-update") or config.getoption("--snapshot-update", default=False)
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: a golden check of the qbc store (select with -m {MARKER})"
    )
    if config.getoption("--qbc-trust", default=False):
        os.environ["QBC_TRUST"] = "1"  # read by harness.sandbox.trusted in this process
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "torch" not in sys.modules:
        # one worker per core already: no OpenMP pool of its own (torch reads this at import;
        # _set_torch_threads pins intra-op threads once golden checks are collected)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_id = workerinput.get("qbc_run_id") if workerinput else None
    config.stash[_STATE] = _State(run_id or uuid.uuid4().hex)
    results = config.getoption("--qbc-results", default=None)
    # Only the controller (not xdist workers) writes the results file.
    if results and workerinput is None:
        path = Path(results)
        if not path.parent.is_dir():
            raise pytest.UsageError(
                f"--qbc-results {results}: directory {path.parent} does not exist"
            )
        writer = ResultsWriter(path)
        config.stash[_WRITER] = writer
        config.pluginmanager.register(writer, "qbc-results")


def pytest_unconfigure(config: pytest.Config) -> None:
    # ``qbc verify`` runs pytest.main in-process: leave nothing registered behind
    writer = config.stash.get(_WRITER, None)
    if writer is not None:
        del config.stash[_WRITER]
        config.pluginmanager.unregister(writer)
    state = config.stash.get(_STATE, None)
    if state is not None and not hasattr(config, "workerinput"):
        for path in _accept_files(state.run_id):
            with contextlib.suppress(OSError):
                path.unlink()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(xdist) Workers share the controller's run id, so only one of them accepts."""
    node.workerinput["qbc_run_id"] = node.config.stash[_STATE].run_id


def downstream_consumers(config: pytest.Config) -> tuple[str, ...]:
    """The consumers ``--qbc-downstream`` names (``all``: every one harness.downstream has)."""
    names = [n.strip() for n in config.getoption("--qbc-downstream").split(",") if n.strip()]
    if not names or names == ["none"]:
        return ()
    from harness.downstream import consumer_names, get_consumer

    if names == ["all"]:
        return tuple(consumer_names())
    try:
        return tuple(get_consumer(n).name for n in names)
    except KeyError as exc:
        raise pytest.UsageError(f"--qbc-downstream: {exc.args[0]}") from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if FIXTURE not in metafunc.fixturenames:
        return
    config = metafunc.config
    store = store_path(config)
    if _update_requested(config):
        _accept_once(config, store)
    if not store.is_dir():
        raise pytest.Collector.CollectError(
            f"qbc: no golden store at {store} (set --qbc-store or qbc_store, "
            "or create it with `qbc generate` / `pytest --qbc-update`)"
        )
    from harness.verify import collect

    _set_torch_threads(config)
    subjects = set(subjects_in_scope(config))
    params = []
    for item in collect(
        store,
        downstream_consumers(config),
        producers=producers_in_scope(config),
        downstream_producers=config.getoption("--qbc-downstream-producers"),
    ):
        g = item.golden
        if subjects and g.subject not in subjects:
            continue
        marks: list[Any] = [pytest.mark.qbc]
        # With `--dist loadgroup`, every producer's goldens of one (subject, engine, case) run on
        # one worker, which then builds today's version of that case once for all of them (and,
        # per downstream consumer, lowers a program that loads the same from two producers
        # once). Not the default, and inert with pytest 9 + pytest-xdist 3.8 (xdist renames
        # item._nodeid, which pytest 9 no longer reads): `qbc verify` groups downstream checks
        # with its own scheduler (harness.cli.xdist_scope) instead.
        group = f"{g.subject}/{g.engine}/{g.case}"
        marks.append(
            pytest.mark.xdist_group(f"{item.consumer}:{group}" if item.consumer else group)
        )
        params.append(pytest.param(item, id=item.id, marks=marks))
    if not params:
        config.stash[_STATE].empty_store = store
    metafunc.parametrize(FIXTURE, params)


def _set_torch_threads(config: pytest.Config) -> None:
    # Each xdist worker is one process per core already; intra-op threads would only fight over
    # the same cores (the models are tiny, so no kernel parallelizes usefully).
    threads = 1 if hasattr(config, "workerinput") else config.getoption("--qbc-torch-threads")
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A store without goldens gives no check at all (not one "empty parameter set" skip, which
    would let a CI gate pass on nothing): its placeholder item is deselected."""
    empty = [item for item in items if _is_placeholder(item)]
    if empty:
        config.hook.pytest_deselected(items=empty)
        items[:] = [item for item in items if item not in empty]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Tell the runner which checks this process will run (after deselection), so one worker
    child can load a golden's TorchScript archives for all its checks (harness.verify)."""
    checks = []
    for item in session.items:
        check = getattr(getattr(item, "callspec", None), "params", {}).get(FIXTURE)
        if hasattr(check, "golden"):
            checks.append(check)
    if checks:  # never imports torch for a run without golden checks
        from harness.verify import plan_checks

        plan_checks(checks)


def _is_placeholder(item: pytest.Item) -> bool:
    """The one item pytest makes for an empty parameter set (its value is a NOTSET token)."""
    if FIXTURE not in getattr(item, "fixturenames", ()):
        return False
    params = getattr(getattr(item, "callspec", None), "params", {})
    return not hasattr(params.get(FIXTURE), "golden")


@pytest.fixture(scope="session")
def qbc_policy(pytestconfig: pytest.Config) -> Any:
    from harness.policy import Policy

    return Policy.load(_path_setting(pytestconfig, "qbc_policy"))


@pytest.fixture(scope="session")
def qbc_known_breaks(pytestconfig: pytest.Config) -> Any:
    from harness.policy import load_known_breaks

    return load_known_breaks(_path_setting(pytestconfig, "qbc_known_breaks"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    # A check that failed before its body ran (a fixture error) still carries its id.
    params = getattr(getattr(item, "callspec", None), "params", {})
    check = params.get(FIXTURE)
    if check is not None and rs.CHECK_ID_PROPERTY not in dict(report.user_properties):
        report.user_properties.append((rs.CHECK_ID_PROPERTY, check.id))
    if check is not None:
        report.sections = [s for s in map(_without_trace_records, report.sections) if s[1]]
        if call.excinfo is not None:
            # the failure's own text, without pytest's "module.Class: " prefix (travels to the
            # xdist controller with the report)
            report.qbc_message = str(call.excinfo.value)  # type: ignore[attr-defined]
    return report


def _without_trace_records(section: tuple[str, str]) -> tuple[str, str]:
    """torch.export logs empty DEBUG records to ``torch.__trace`` (structured traces for
    tlparse): dozens per failing check, and nothing a reader can use."""
    title, text = section
    if not title.startswith("Captured log"):
        return section
    kept = [line for line in text.splitlines(True) if " torch.__trace:" not in line]
    rest = "".join(kept)
    return title, rest if rest.strip() else ""


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    record, _lock = _accept_files(state.run_id)
    if record.exists():
        terminalreporter.section("qbc: accepted goldens")
        for line in record.read_text().splitlines():
            terminalreporter.write_line(line)
    if state.empty_store is not None:
        terminalreporter.write_line(f"qbc: the golden store {state.empty_store} has no goldens")


# ------------------------------------------------------------------------------ accepting


def _accept_files(run_id: str) -> tuple[Path, Path]:
    base = Path(tempfile.gettempdir()) / f"qbc-accept-{run_id}"
    return base.with_suffix(".txt"), base.with_suffix(".lock")


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    import fcntl

    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocking: other workers wait for the first to finish
        yield
    finally:
        os.close(fd)


def _accept_once(config: pytest.Config, store: Path) -> None:
    """Regenerate today's goldens once per run (the first xdist worker to collect does it while
    the others wait), then every process collects the accepted store."""
    state = config.stash[_STATE]
    if state.accepted:
        return
    record, lock = _accept_files(state.run_id)
    with _exclusive(lock):
        if not record.exists():
            from harness.regen import accept

            lines = accept(store, subjects_in_scope(config))
            record.write_text("\n".join(lines) + "\n")
    state.accepted = True


# ------------------------------------------------------------------------------ results


class ResultsWriter:
    """Collects one :class:`harness.results.CheckResult` per check; writes them at the end.

    The check id comes from the ``qbc_check`` user property (never from the node id), so a
    check is named whatever its id looks like. Other ``qbc_<field>`` properties a check records
    land in the result's field of that name (``qbc_drift`` -> ``drift``, ``qbc_isa`` -> ``isa``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: dict[str, rs.CheckResult] = {}
        self._consumer: dict[str, str] | None = None

    @property
    def consumer(self) -> dict[str, str]:
        # the consumer is described like a producer: {"id", "torch", "qbc", "python"}; asked
        # only once a check reports, so torch is imported only by sessions that check goldens
        if self._consumer is None:
            from harness import isa
            from harness.manifest import producer_info

            # plus the ISA class it computes in (after any run-wide cap): the same release on
            # two CPU classes is two consumers
            self._consumer = {**producer_info(), "isa": isa.machine_class()}
        return self._consumer

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        check_id = props.get(rs.CHECK_ID_PROPERTY)
        if check_id is None:
            return
        outcome = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xfail" if report.skipped else "xpass"
        elif report.failed and props.get("qbc_known_break_fixed"):
            outcome = "xpass"  # the check passed; its known break no longer happens
        if report.when != "call" and outcome not in ("failed", "skipped", "xfail"):
            return
        previous = self.results.get(check_id)
        if report.when != "call" and previous is not None and previous.outcome != "passed":
            return  # a teardown error does not hide the failure the call already had
        fields: dict[str, Any] = {
            name: props[prop] for prop, name in rs.PROPERTY_FIELDS.items() if prop in props
        }
        # a downstream runtime's check names its consumer (harness.downstream); others are ours
        consumer = fields.pop("consumer", None) or self.consumer
        self.results[check_id] = rs.CheckResult.from_id(
            check_id,
            outcome,
            message=_message(report),
            duration=report.duration,
            consumer=consumer,
            **fields,
        )

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        rs.write_results(self.path, self.results.values())


def _message(report: pytest.TestReport) -> str:
    if report.failed and getattr(report, "qbc_message", None):
        return str(report.qbc_message)  # type: ignore[attr-defined]
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        return str(crash.message) if crash is not None else str(report.longrepr)
    if hasattr(report, "wasxfail"):
        # "known break <name>: <reason>": the break happened the way its entry says
        return str(report.wasxfail).removeprefix("reason: ")
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    return ""
