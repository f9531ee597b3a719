"""The ``qbc`` pytest plugin as a project's CI gate uses it: a test file holding only
``from harness.verify import test_golden``, options on the command line or in pyproject, run in
a subprocess the way CI runs pytest.

The store is a copy of two committed torch_ao goldens (per_tensor_observer: 5 formats on
fbgemm; linear: 7 formats on qnnpack), 12 checks in all."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import PRODUCER_ID

GATE = "from harness.verify import test_golden\n"


@pytest.fixture
def project(tmp_path: Path, small_store: Path) -> Path:
    """A project with a one-line golden gate and a small store in ``golden/``."""
    (tmp_path / "test_gate.py").write_text(GATE)
    (tmp_path / "test_unit.py").write_text("def test_arithmetic():\n    assert 1 + 1 == 2\n")
    return tmp_path


def pytest_run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        cwd=project,
        timeout=600,
    )


def test_a_missing_store_is_an_error_naming_it_never_a_skip(project: Path) -> None:
    done = pytest_run(project, "test_gate.py", "--qbc-store", "/nonexistent")

    assert done.returncode == 2  # pytest's "interrupted": collection failed
    assert "qbc: no golden store at /nonexistent" in done.stdout
    assert "skipped" not in done.stdout


def test_a_store_without_goldens_collects_nothing_and_exits_5(project: Path) -> None:
    (project / "empty").mkdir()

    done = pytest_run(project, "test_gate.py", "--qbc-store", "empty")

    assert done.returncode == 5  # pytest's "no tests collected"
    assert f"the golden store {project / 'empty'} has no goldens" in done.stdout


def test_ini_options_name_the_store_policy_and_known_breaks(project: Path) -> None:
    # The store moves to store/, named only by pyproject. The policy allows less than no error
    # (max_steps -1), so even bit-exact numeric checks fail saying so; the known break covers
    # linear/graph (not numeric), which then fails as an unexpected pass (XPASS): both files were
    # read from the ini.
    shutil.move(project / "golden", project / "store")
    (project / "policy.toml").write_text("[default]\nmax_steps = -1\n")
    (project / "breaks.toml").write_text(
        '[[break]]\nname = "from-pyproject"\ncase = "linear"\nformat = "graph"\nfails = "graph"\n'
        'reason = "named in pyproject"\n'
    )
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [tool.pytest.ini_options]
            qbc_store = "store"
            qbc_policy = "policy.toml"
            qbc_known_breaks = "breaks.toml"
            """
        )
    )

    done = pytest_run(project, "test_gate.py")

    assert "exceeds policy (max_steps -1" in done.stdout
    assert "XPASS known break from-pyproject: this check passed" in done.stdout
    assert "12 items" in done.stdout or "collected 12" in done.stdout


def test_golden_checks_carry_the_qbc_marker(project: Path) -> None:
    only_units = pytest_run(project, "-m", "not qbc", "--strict-markers", "-q")
    only_goldens = pytest_run(project, "-m", "qbc", "--strict-markers", "-q")

    assert only_units.returncode == 0, only_units.stdout
    assert "1 passed, 12 deselected" in only_units.stdout
    assert only_goldens.returncode == 0, only_goldens.stdout
    assert "12 passed, 1 deselected" in only_goldens.stdout


def test_subject_option_keeps_only_that_subjects_goldens(project: Path) -> None:
    done = pytest_run(project, "test_gate.py", "--qbc-subject", "qbc", "-q")

    # the store holds torch_ao goldens only: nothing of qbc's, so nothing is collected
    assert done.returncode == 5, done.stdout


def test_a_failing_check_shows_the_goldens_message_not_the_runners_frames(project: Path) -> None:
    graph = project / "golden" / "torch_ao" / PRODUCER_ID / "qnnpack" / "linear" / "graph.txt"
    graph.write_text(graph.read_text() + "  extra_op\n")

    done = pytest_run(project, "test_gate.py", "--tb=long")

    assert done.returncode == 1
    assert "golden file failed its integrity check: subject torch_ao" in done.stdout
    assert "harness/verify.py" not in done.stdout  # no frame of the runner is printed
    assert "def test_golden" not in done.stdout


def test_results_rows_are_named_by_the_check_id_whatever_the_test_is_called(
    project: Path,
) -> None:
    (project / "test_gate.py").write_text(
        "from harness.verify import test_golden as test_my_store  # noqa: F401\n"
    )

    done = pytest_run(project, "test_gate.py", "--qbc-results", "results.json")

    assert done.returncode == 0, done.stdout
    rows = json.loads((project / "results.json").read_text())
    assert len(rows) == 12
    assert f"torch_ao/{PRODUCER_ID}/qnnpack/linear/graph" in {r["id"] for r in rows}


def test_results_into_a_missing_directory_is_a_usage_error_before_any_check(
    project: Path,
) -> None:
    done = pytest_run(project, "test_gate.py", "--qbc-results", "nowhere/results.json")

    assert done.returncode == 4  # pytest's usage error
    assert "--qbc-results nowhere/results.json: directory nowhere does not exist" in done.stderr


def test_the_results_writer_leaves_nothing_registered_after_an_in_process_run(
    project: Path,
) -> None:
    script = textwrap.dedent(
        """
        import pytest

        class Probe:
            @pytest.hookimpl(trylast=True)
            def pytest_unconfigure(self, config):
                self.left = config.pluginmanager.get_plugin("qbc-results")

        for n in range(2):  # as `qbc verify` and `qbc report` do, in one process
            probe = Probe()
            code = pytest.main(
                ["test_gate.py", "-q", "-p", "no:cacheprovider", "-k", "observer",
                 "--qbc-results", f"results{n}.json"],
                plugins=[probe],
            )
            assert code == 0, code
            assert probe.left is None, probe.left
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=project, timeout=600
    )

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    first, second = (json.loads((project / f"results{n}.json").read_text()) for n in range(2))
    assert len(first) == len(second) == 5
