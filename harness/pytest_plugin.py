"""pytest plugin ``qbc`` (entry point ``pytest11``): parametrizes the BC runner over the store.

Any test requesting the ``qbc_check`` fixture (``harness.verify.test_golden``, re-exported by
``tests/bc/test_goldens.py``) runs once per (golden, format) of the store, with ids like
``torch_ao/torch-2.13.0_qbc-0.1.0/fbgemm/linear/scripted``. A check covered by an entry of the
known-breaks file must fail the way the entry says (an xfail carrying its name and reason);
failing otherwise is a failure, passing is an XPASS that fails the run. Warnings raised during
a check are recorded in its results row, never raised. Collection is deterministic, so
pytest-xdist workers agree on the item list.

Options:
  --qbc-store PATH          golden store to verify (default: <rootdir>/golden)
  --qbc-policy PATH         tolerance policy TOML (default: harness/data/policy.toml)
  --qbc-known-breaks PATH   known-breaks TOML (default: harness/data/known_breaks.toml)
  --qbc-results PATH        write every check's outcome as JSON (used by ``qbc verify``)
  --qbc-torch-threads N     torch intra-op threads in a process that runs BC checks (default 1;
                            0 keeps torch's default). Goldens are tiny: extra threads only add
                            synchronization, which costs most on a loaded machine or with xdist
                            (bench/README.md: 1 thread cut the runner's CPU time by ~40%).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qbc", "qbc golden store")
    group.addoption(
        "--qbc-store", default=None, help="golden store to verify (default: <rootdir>/golden)"
    )
    group.addoption("--qbc-policy", default=None, help="tolerance policy TOML")
    group.addoption("--qbc-known-breaks", default=None, help="known-breaks TOML")
    group.addoption("--qbc-results", default=None, help="write check outcomes as JSON here")
    group.addoption(
        "--qbc-torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads while running BC checks (default 1; 0: torch's default)",
    )


def store_path(config: pytest.Config) -> Path:
    opt = config.getoption("--qbc-store")
    return Path(opt) if opt else Path(config.rootpath) / "golden"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "qbc_check" not in metafunc.fixturenames:
        return
    from harness.verify import collect

    config = metafunc.config
    threads = config.getoption("--qbc-torch-threads")
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    params = []
    for item in collect(store_path(config)):
        marks = []
        # With `--dist loadgroup`, every producer's goldens of one (subject, engine, case) run on
        # one worker, which then builds today's version of that case once for all of them.
        g = item.golden
        marks.append(pytest.mark.xdist_group(f"{g.subject}/{g.engine}/{g.case}"))
        params.append(pytest.param(item, id=item.id, marks=marks))
    metafunc.parametrize("qbc_check", params)


@pytest.fixture(scope="session")
def qbc_policy(pytestconfig: pytest.Config) -> Any:
    from harness.policy import Policy

    path = pytestconfig.getoption("--qbc-policy")
    return Policy.load(Path(path) if path else None)


@pytest.fixture(scope="session")
def qbc_known_breaks(pytestconfig: pytest.Config) -> Any:
    from harness.policy import load_known_breaks

    path = pytestconfig.getoption("--qbc-known-breaks")
    return load_known_breaks(Path(path) if path else None)


class _Results:
    def __init__(self, path: Path) -> None:
        from harness.manifest import producer_info

        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        # the consumer is described like a producer: {"id", "torch", "qbc", "python"}
        self.consumer = producer_info()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if "[" not in report.nodeid:
            return
        param = report.nodeid.rsplit("[", 1)[1].rstrip("]")
        if param.count("/") != 4:
            return
        outcome = report.outcome
        props = dict(report.user_properties)
        if hasattr(report, "wasxfail"):
            outcome = "xfail" if report.skipped else "xpass"
        elif report.failed and props.get("qbc_known_break_fixed"):
            outcome = "xpass"  # the check passed; its known break no longer happens
        if report.when == "call" or outcome in ("failed", "skipped", "xfail"):
            if (
                report.when != "call"
                and param in self.rows
                and self.rows[param]["outcome"] != "passed"
            ):
                return
            message = ""
            if report.failed:
                message = (
                    str(report.longrepr.reprcrash.message)
                    if hasattr(report.longrepr, "reprcrash")
                    else str(report.longrepr)
                )
            elif hasattr(report, "wasxfail"):
                # "known break <name>: <reason>": the break matched what its entry says
                message = report.wasxfail.removeprefix("reason: ")
            elif report.skipped and isinstance(report.longrepr, tuple):
                message = report.longrepr[2]
            self.rows[param] = {
                "id": param,
                "outcome": outcome,
                "message": message,
                "duration": report.duration,
                # which consumer ran the check, and the drift numbers (max error in steps,
                # mismatched elements, SQNR) the test recorded: the report's inputs
                "consumer": self.consumer,
                "drift": props.get("qbc_drift", {}),
                # warnings raised while the check ran: recorded, never judged
                "warnings": props.get("qbc_warnings", []),
            }
            if props.get("qbc_known_break"):
                self.rows[param]["known_break"] = props["qbc_known_break"]

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.path.write_text(
            json.dumps(sorted(self.rows.values(), key=lambda r: r["id"]), indent=1)
        )


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        # Each xdist worker is one process per core already; intra-op threads would only fight
        # over the same cores (the models are tiny, so no kernel parallelizes usefully). Through
        # the environment while torch is not imported yet: a run that never needs torch (this
        # plugin is active in every pytest run of the environment) does not pay for importing it.
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
        else:
            os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = config.getoption("--qbc-results", default=None)
    # Only the controller (not xdist workers) writes the results file.
    if results and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Results(Path(results)), "qbc-results")
