"""The nox sessions: every torch release, a lint session, and nox's own flags honoured.

The lint session is the one run for real (a venv with ruff, in a temporary --envdir): torch
sessions install multi-GB builds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOX = str(Path(sys.executable).parent / "nox")


def nox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NOX, "-f", str(REPO / "noxfile.py"), *args],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip


def test_sessions_cover_every_release_and_run_tests_and_verify_by_default() -> None:
    listed = nox("-l", "--json")
    every = nox("-l", "--json", "-s", "tests", "verify", "regen", "lint")

    assert listed.returncode == every.returncode == 0, listed.stderr
    default = [s["session"] for s in json.loads(listed.stdout)]
    assert default == ["tests(torch='2.13.0')", "verify(torch='2.13.0')"]
    names = {s["session"] for s in json.loads(every.stdout)}
    assert "lint" in names
    for release in ("2.6.0", "2.13.0", "2.14.1"):
        for task in ("tests", "verify", "regen"):
            assert f"{task}(torch='{release}')" in names


def test_lint_runs_ruff_and_a_reused_venv_installs_nothing(tmp_path: Path) -> None:
    # what ruff says of the tree is the lint session's business (CONTRIBUTING); this test is
    # about nox: the first run installs ruff into a venv of its own, -R reuses it as it is
    first = nox("--envdir", str(tmp_path), "-s", "lint")
    again = nox("--envdir", str(tmp_path), "-R", "-s", "lint")

    assert "pip install 'ruff>=0.6'" in first.stderr, first.stderr[-2000:]
    assert "nox > ruff check ." in first.stderr
    assert "nox > ruff check ." in again.stderr, again.stderr[-2000:]
    assert "install" not in again.stderr  # nox skipped the install step
