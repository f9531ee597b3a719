"""The worked example of docs/plugins.md (examples/minq), installed and used as its author would.

The example is copied to a temporary project and installed there (``pip install --target``),
so qbc finds it through its ``qbc.subjects`` entry point in the subprocesses that get that
folder on PYTHONPATH, and this test session's own environment stays as it was. The "change" is
an edit of the installed library, as a developer's edit of their own code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "minq"
BIN = Path(sys.executable).parent
PRODUCER_SUFFIX = "_minq-0.1.0"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/minq installed into ``<tmp>/site`` (non-editable, no dependencies)."""
    root = tmp_path_factory.mktemp("minq")
    source = root / "source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("golden", "*.egg-info"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(root / "site"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root / "site"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """minq's repository as its author has it: pyproject (qbc_store, qbc_subjects) and the gate."""
    shutil.copytree(EXAMPLE, tmp_path / "minq", ignore=shutil.ignore_patterns("*.egg-info"))
    return tmp_path / "minq"


def run(site: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def qbc(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(site, cwd, str(BIN / "qbc"), *args)


def pytest_(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(site, cwd, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args)


def test_the_example_adapter_is_at_most_40_lines_and_the_one_docs_show() -> None:
    adapter = (EXAMPLE / "src" / "minq" / "qbc_adapter.py").read_text()
    assert len(adapter.splitlines()) <= 40
    assert f"```python\n{adapter}```" in (REPO / "docs" / "plugins.md").read_text()


def test_generate_verify_change_fail_accept_pass(installed: Path, project: Path) -> None:
    # generate: the one golden of minq, under a producer id that names minq's version
    made = qbc(installed, project, "generate", "--subject", "minq")
    assert made.returncode == 0, made.stderr
    assert "1 added, 0 changed, 0 unchanged goldens" in made.stdout
    (producer,) = [p.name for p in (project / "golden" / "minq").iterdir()]
    assert producer.endswith(PRODUCER_SUFFIX)

    # verify: pytest with nothing but pyproject's qbc_store / qbc_subjects; 6 formats, 6 checks
    ok = pytest_(installed, project)
    assert ok.returncode == 0, ok.stdout
    assert "6 passed" in ok.stdout

    # change: round -> floor moves every weight code down by up to one step
    lib = installed / "minq" / "__init__.py"
    original = lib.read_text()
    lib.write_text(original.replace("torch.round(w / scale)", "torch.floor(w / scale)"))
    try:
        # fail: today's code no longer reproduces the stored output (the reproduce check); the
        # stored artifacts still load and give the stored output (the load checks)
        failed = pytest_(installed, project)
        assert failed.returncode == 1
        assert "1 failed, 5 passed" in failed.stdout
        assert "reproduce check: output differs from the golden beyond policy: subject minq" in (
            failed.stdout
        )

        # accept: the syrupy way; the run regenerates once (one xdist worker does, the other waits),
        # says what changed, then verifies
        accepted = pytest_(installed, project, "--snapshot-update", "-n", "2")
        assert accepted.returncode == 0, accepted.stdout
        assert "qbc: accepted goldens" in accepted.stdout
        assert "0 added, 1 changed, 0 unchanged goldens; largest drift:" in accepted.stdout

        # pass: the accepted goldens are today's
        again = pytest_(installed, project)
        assert again.returncode == 0, again.stdout
    finally:
        lib.write_text(original)


def test_each_version_of_a_plugin_keeps_its_goldens_side_by_side(
    installed: Path, project: Path
) -> None:
    lib = installed / "minq" / "__init__.py"
    original = lib.read_text()
    try:
        # 0.1.0 accepted from pytest into the empty store (pyproject names the subject), 0.2.0
        # written by the command line
        accepted = pytest_(installed, project, "--qbc-update", "-q")
        assert accepted.returncode == 0, accepted.stdout
        assert "1 added, 0 changed, 0 unchanged goldens" in accepted.stdout
        lib.write_text(original.replace('__version__ = "0.1.0"', '__version__ = "0.2.0"'))
        made = qbc(installed, project, "generate", "--subject", "minq")
        assert made.returncode == 0, made.stderr
    finally:
        lib.write_text(original)

    producers = sorted(p.name for p in (project / "golden" / "minq").iterdir())
    assert [p.rsplit("_", 1)[1] for p in producers] == ["minq-0.1.0", "minq-0.2.0"]
    newest = json.loads(
        (project / "golden/minq" / producers[1] / "reference/linear/manifest.json").read_text()
    )
    assert newest["producer"]["subject_version"] == "0.2.0"
    # both versions' goldens verify today (the code did not change between the versions)
    both = pytest_(installed, project, "-q")
    assert both.returncode == 0, both.stdout
    assert "12 passed" in both.stdout


def test_an_installed_plugin_leaves_qbcs_own_tests_and_coverage_alone(installed: Path) -> None:
    listed = pytest_(
        installed,
        REPO,
        "tests/bc/test_snapshots.py",
        "--collect-only",
        "-q",
        "--snapshot-warn-unused",
    )
    assert listed.returncode == 0, listed.stdout
    assert "minq" not in listed.stdout

    covered = run(
        installed, REPO, sys.executable, "-c",
        "from harness.report import coverage; c = coverage('golden');"
        "assert not c['missing'], c['missing'][:5]; print(c['expected'])",
    )  # fmt: skip
    assert covered.returncode == 0, covered.stderr
