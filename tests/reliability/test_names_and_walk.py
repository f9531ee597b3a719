"""Names and the store walk (issue 12): a bad name or a symlink is that golden's failure.

Before: a producer folder ``torch-2.13.0²_qbc-0.1.0`` emptied the matrix (``int('0²')`` raised
in collection); ``golden/evil -> /`` raised PermissionError walking /proc, ``-> /usr`` gave
3102 failing checks; a case ``lin[ear`` or a format key ``../../x`` lost its row (the plugin
parsed ids out of test names), so ``qbc verify`` exited 1 naming nothing; duplicate JSON keys
were accepted (last wins, a reviewer reads the first).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.manifest import parse_producer
from harness.store import iter_goldens
from harness.verify import collect, known_break

from .reliability_helpers import (
    ENGINE,
    OBSERVER,
    PRODUCER,
    SUBJECT,
    manifest_file,
    read_manifest,
    run_checks,
    write_manifest,
)


def problems(store: Path) -> dict[str, str]:
    return {g.id: g.problem for g in iter_goldens(store) if g.problem}


def test_a_producer_name_with_a_non_ascii_digit_is_that_goldens_failure(store: Path) -> None:
    bad = "torch-2.13.0\u00b2_qbc-0.1.0"
    shutil.copytree(store / SUBJECT / PRODUCER, store / SUBJECT / bad)

    found = problems(store)

    assert list(found) == [f"{SUBJECT}/torch-2.13.0\\xb2_qbc-0.1.0/*/*"]
    assert "is not a producer id" in next(iter(found.values()))
    # the good goldens are still collected, and known-break matching does not raise on it
    assert len([i for i in collect(store) if not i.golden.problem]) > 2
    assert all(known_break(i, []) is None for i in collect(store))
    assert parse_producer(bad)[0] == (2, 13)  # the lenient parser no longer raises


@pytest.mark.parametrize("target", ["/", "/usr"])
def test_a_symlink_in_the_store_is_never_followed(store: Path, target: str) -> None:
    os.symlink(target, store / "evil")
    os.symlink(target, store / SUBJECT / "link")

    found = problems(store)

    assert set(found) == {"evil/*/*/*", f"{SUBJECT}/link/*/*"}
    assert all(f"is a symlink (to {target})" in p for p in found.values())
    assert len(collect(store)) < 40  # the real goldens' checks plus two, not thousands


def test_a_case_name_outside_the_grammar_is_named_as_failing(store: Path) -> None:
    shutil.copytree(
        store / SUBJECT / PRODUCER / ENGINE / OBSERVER,
        store / SUBJECT / PRODUCER / ENGINE / "lin[ear",
    )

    found = problems(store)

    assert list(found) == [f"{SUBJECT}/{PRODUCER}/{ENGINE}/lin[ear"]
    assert (
        "case name 'lin[ear' is not a qbc name" in found[f"{SUBJECT}/{PRODUCER}/{ENGINE}/lin[ear"]
    )


def test_a_format_key_that_is_a_path_is_a_manifest_problem(store: Path, policy) -> None:
    data = read_manifest(store, OBSERVER)
    data["files"]["../../x"] = data["files"]["input"]
    write_manifest(store, OBSERVER, data)

    outcomes = run_checks(store, OBSERVER, None, policy)

    assert [o.kind for o in outcomes] == ["failed"]
    assert "file entry '../../x': format name '../../x' is not a qbc name" in outcomes[0].message


def test_duplicate_keys_in_a_manifest_are_refused(store: Path, policy) -> None:
    path = manifest_file(store, OBSERVER)
    text = path.read_text()
    doubled = re.sub(r'("schema": \d+)', r"\1, \1", text, count=1)  # whatever its schema
    assert doubled != text
    path.write_text(doubled)

    outcomes = run_checks(store, OBSERVER, None, policy)

    assert [o.kind for o in outcomes] == ["failed"]
    assert "duplicate key 'schema'" in outcomes[0].message


def test_qbc_verify_names_every_failing_golden_in_summary_json_and_junit(
    store: Path, tmp_path: Path
) -> None:
    shutil.copytree(store / SUBJECT / PRODUCER, store / SUBJECT / "torch-2.13.0\u00b2_qbc-0.1.0")
    weird = store / SUBJECT / PRODUCER / ENGINE / "lin[ear"
    shutil.copytree(store / SUBJECT / PRODUCER / ENGINE / OBSERVER, weird)
    os.symlink("/", store / "evil")
    results, junit = tmp_path / "r.json", tmp_path / "j.xml"

    proc = subprocess.run(
        [
            *(sys.executable, "-m", "harness.cli", "verify", "--store", str(store), "-n", "0"),
            *("--json", str(results), "--junitxml", str(junit), "-k", "manifest"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert proc.returncode == 1, proc.stderr[-2000:]
    failed = {r["id"] for r in json.loads(results.read_text()) if r["outcome"] == "failed"}
    expected = {
        "evil/*/*/*/manifest",
        f"{SUBJECT}/torch-2.13.0\\xb2_qbc-0.1.0/*/*/manifest",
        f"{SUBJECT}/{PRODUCER}/{ENGINE}/lin[ear/manifest",
    }
    assert failed == expected
    for check in expected:
        assert f"FAILED {check}" in proc.stdout
        assert f'value="{check}"' in junit.read_text()  # the qbc_check_id property
