"""Known breaks say what must happen; warnings raised by a golden are recorded, never judged.

Each runner test runs pytest in a subprocess from the checkout (so the project's
``filterwarnings = error`` applies, as for a developer) over a two-golden copy of the store and
reads the results rows the plugin writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PRODUCER_ID, REPO

from harness.policy import Failure, KnownBreak, load_known_breaks

GRAPH = f"torch_ao/{PRODUCER_ID}/qnnpack/linear/graph"
TRACED = f"torch_ao/{PRODUCER_ID}/qnnpack/linear/traced"


def run_checks(
    store: Path, tmp_path: Path, breaks: str, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict]]:
    kb = tmp_path / "breaks.toml"
    kb.write_text(breaks)
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/bc/test_goldens.py", "-p", "no:cacheprovider",
         "-q", "--qbc-store", str(store), "--qbc-known-breaks", str(kb),
         "--qbc-results", str(results), *extra],
        capture_output=True, text=True, cwd=REPO, timeout=300, env=env,
    )  # fmt: skip
    rows = {r["id"]: r for r in json.loads(results.read_text())}
    return proc, rows


def break_graph(store: Path) -> None:
    """Append an op to qnnpack/linear's stored graph: its file no longer matches the manifest."""
    graph = store / "torch_ao" / PRODUCER_ID / "qnnpack" / "linear" / "graph.txt"
    graph.write_text(graph.read_text() + "  extra_op\n")


def test_a_known_break_that_fails_as_its_entry_says_is_an_xfail_naming_the_entry(
    small_store, tmp_path
):
    break_graph(small_store)
    proc, rows = run_checks(
        small_store,
        tmp_path,
        """
[[break]]
name = "edited-graph"
format = "graph"
case = "linear"
raises = "IntegrityError"
match = "does not match its manifest"
reason = "the graph file was edited"
""",
    )
    assert proc.returncode == 0, proc.stdout
    assert rows[GRAPH]["outcome"] == "xfail"
    assert rows[GRAPH]["known_break"] == "edited-graph"
    assert rows[GRAPH]["message"] == "known break edited-graph: the graph file was edited"


def test_a_known_break_that_fails_for_another_reason_is_a_failure(small_store, tmp_path):
    # The entry expects the graph comparison to fail; the check fails its integrity check
    # instead (an IntegrityError): a different break, so it is reported as a failure.
    break_graph(small_store)
    proc, rows = run_checks(
        small_store,
        tmp_path,
        """
[[break]]
name = "graph-changed"
format = "graph"
case = "linear"
fails = "graph"
reason = "the graph changed"
""",
    )
    assert proc.returncode == 1
    assert rows[GRAPH]["outcome"] == "failed"
    assert (
        "known break graph-changed expects: the graph check fails; expected the graph check to "
        "fail, it raised IntegrityError"
    ) in rows[GRAPH]["message"]


def test_a_known_break_whose_message_differs_is_a_failure(small_store, tmp_path):
    break_graph(small_store)
    proc, rows = run_checks(
        small_store,
        tmp_path,
        """
[[break]]
name = "edited-graph"
format = "graph"
case = "linear"
raises = "IntegrityError"
match = "size .* differs"
reason = "the graph file was edited"
""",
    )
    assert proc.returncode == 1
    assert rows[GRAPH]["outcome"] == "failed"
    assert "the failure message does not match /size .* differs/" in rows[GRAPH]["message"]


def test_a_known_break_that_passes_is_an_xpass_naming_the_entry_and_fails_the_run(
    small_store, tmp_path
):
    proc, rows = run_checks(
        small_store,
        tmp_path,
        """
[[break]]
name = "demo"
case = "linear"
format = "traced"
producers = ">=2.13"
raises = "KeyError"
reason = "demo break"
""",
    )
    assert proc.returncode == 1
    assert rows[TRACED]["outcome"] == "xpass"
    assert rows[TRACED]["known_break"] == "demo"
    assert "XPASS known break demo: this check passed" in rows[TRACED]["message"]


PLUGIN = """
import warnings

import harness.verify

_judge = harness.verify.judge


def judge(*args, **kwargs):
    warnings.warn("a golden said something", UserWarning)
    return _judge(*args, **kwargs)


harness.verify.judge = judge
"""


def test_a_warning_raised_while_a_golden_runs_is_recorded_and_never_decides_its_verdict(
    small_store, tmp_path
):
    # The project's pytest config turns every warning into an error; -W error says it again.
    # The judged checks still pass, and their rows say which code warned what.
    (tmp_path / "qbc_warns.py").write_text(PLUGIN)
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    proc, rows = run_checks(small_store, tmp_path, "", "-W", "error", "-p", "qbc_warns", env=env)
    assert proc.returncode == 0, proc.stdout
    assert all(r["outcome"] == "passed" for r in rows.values())
    ours = {
        "origin": "qbc_warns.py",
        "category": "UserWarning",
        "message": "a golden said something",
        "location": "qbc_warns.py:10",
        "count": 1,
    }
    # the traced load also records what torch itself says (torch.jit.load's deprecation on
    # 2.13), whichever process loaded it
    assert ours in rows[TRACED]["warnings"]
    assert ours not in rows[GRAPH]["warnings"]  # the graph check judges no numbers


def failure(check: str, error: str | None, message: str = "boom") -> Failure:
    return Failure(check=check, error=error, message=message)


def test_an_entry_states_exactly_one_expectation():
    with pytest.raises(ValueError, match="exactly one of raises"):
        KnownBreak(name="x", reason="r")
    with pytest.raises(ValueError, match="exactly one of raises"):
        KnownBreak(name="x", reason="r", raises="KeyError", fails="load")
    with pytest.raises(ValueError, match="fails = 'loading'"):
        KnownBreak(name="x", reason="r", fails="loading")


def test_a_raises_entry_accepts_only_that_exception_with_a_matching_message():
    entry = KnownBreak(name="x", reason="r", raises="KeyError", match="no item named 'version'")
    assert entry.mismatch(failure("load", "KeyError", "KeyError: no item named 'version'")) is None
    assert "raised TypeError" in entry.mismatch(
        failure("load", "TypeError", "no item named 'version'")
    )
    assert "load check failed" in entry.mismatch(failure("load", None))
    assert "does not match" in entry.mismatch(failure("load", "KeyError", "KeyError: 'x'"))


def test_a_fails_entry_accepts_only_that_check_failing_its_comparison():
    entry = KnownBreak(name="x", reason="r", fails="reproduce")
    assert entry.mismatch(failure("reproduce", None)) is None
    assert (
        entry.mismatch(failure("load", None))
        == "expected the reproduce check to fail, it load check failed"
    )
    assert "raised RuntimeError" in entry.mismatch(failure("reproduce", "RuntimeError"))


def test_qbc_version_ranges_select_breaks_of_qbc_itself():
    # A break between qbc releases: goldens of qbc < 0.2.0 read by qbc >= 0.2.0, any torch.
    entry = KnownBreak(
        name="x", reason="r", fails="reproduce", producers_qbc="<0.2.0", consumers_qbc=">=0.2.0"
    )
    assert entry.matches(
        "qbc", "linear", "reference", "expected", (2, 8, 0), (2, 13, 0), (0, 1, 0), (0, 2, 0)
    )
    assert not entry.matches(
        "qbc", "linear", "reference", "expected", (2, 8, 0), (2, 13, 0), (0, 2, 0), (0, 2, 0)
    )
    assert not entry.matches(
        "qbc", "linear", "reference", "expected", (2, 8, 0), (2, 13, 0), (0, 1, 0), (0, 1, 0)
    )


def test_the_known_breaks_file_refuses_unknown_keys_and_duplicate_names(tmp_path):
    path = tmp_path / "kb.toml"
    path.write_text('[[break]]\nname = "a"\nreason = "r"\nraises = "KeyError"\nconsumrs = "<2.7"\n')
    with pytest.raises(ValueError, match=r"known break 'a': unknown keys \['consumrs'\]"):
        load_known_breaks(path)
    entry = '[[break]]\nname = "a"\nreason = "r"\nraises = "KeyError"\n'
    path.write_text(entry + entry)
    with pytest.raises(ValueError, match=r"duplicate names \['a'\]"):
        load_known_breaks(path)


def test_the_committed_known_breaks_file_loads_and_every_entry_says_when_it_was_measured():
    entries = load_known_breaks()
    assert entries
    assert all(e.measured for e in entries), [e.name for e in entries if not e.measured]
