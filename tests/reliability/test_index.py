"""The store index (issue 12): nothing in the store changes without the index.

Before: removing a golden, or its ``scripted`` / every load format from a manifest, exited 0 (the
runner only checked what was there); a re-signed file passed. Now each is a failing check naming
the golden, until the index is rebuilt (``python tools/regen_goldens.py --index``) and that
diff is reviewed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from harness import index
from harness.verify import collect

from .reliability_helpers import (
    ENGINE,
    LINEAR,
    OBSERVER,
    PRODUCER,
    SUBJECT,
    file_of,
    read_manifest,
    resign,
    write_manifest,
)

LINEAR_ID = f"{SUBJECT}/{PRODUCER}/{ENGINE}/{LINEAR}"


def index_failures(store: Path) -> dict[str, str]:
    return {i.id: i.golden.problem for i in collect(store) if i.golden.problem}


def indexed(store: Path) -> Path:
    index.write(store)
    assert index_failures(store) == {}
    return store


def test_an_indexed_store_has_no_index_failures(store: Path) -> None:
    indexed(store)


def test_a_store_without_an_index_fails_once_naming_the_command(store: Path) -> None:
    assert list(index_failures(store)) == ["*/*/*/*/index"]
    assert "tools/regen_goldens.py --index" in index_failures(store)["*/*/*/*/index"]


def test_a_removed_golden_fails(store: Path) -> None:
    indexed(store)
    shutil.rmtree(store / SUBJECT / PRODUCER / ENGINE / LINEAR)
    assert "removed without the index" in index_failures(store)[f"{LINEAR_ID}/index"]


def test_an_added_golden_fails(store: Path) -> None:
    indexed(store)
    shutil.copytree(
        store / SUBJECT / PRODUCER / ENGINE / OBSERVER,
        store / SUBJECT / PRODUCER / "x86" / OBSERVER,
    )
    data = read_manifest(store, OBSERVER)
    data["engine"] = "x86"
    (store / SUBJECT / PRODUCER / "x86" / OBSERVER / "manifest.json").write_text(json.dumps(data))
    failures = index_failures(store)
    assert "added without it" in failures[f"{SUBJECT}/{PRODUCER}/x86/{OBSERVER}/index"]


def test_a_format_dropped_from_a_manifest_fails_naming_it(store: Path) -> None:
    indexed(store)
    data = read_manifest(store, LINEAR)
    del data["files"]["scripted"]
    write_manifest(store, LINEAR, data)
    message = index_failures(store)[f"{LINEAR_ID}/index"]
    assert "changed without the index" in message and "formats removed: scripted" in message


def test_a_resigned_file_fails(store: Path) -> None:
    indexed(store)
    path = file_of(store, LINEAR, "graph")
    path.write_text(path.read_text() + "# tampered\n")
    resign(store, LINEAR, "graph")  # the manifest matches the file: only the index can tell
    assert "changed without the index" in index_failures(store)[f"{LINEAR_ID}/index"]


def test_duplicate_keys_in_the_index_are_refused(store: Path) -> None:
    indexed(store)
    p = index.path(store)
    p.write_text(p.read_text().replace('"schema": 1', '"schema": 1, "schema": 1', 1))
    assert "duplicate key 'schema'" in index_failures(store)["*/*/*/*/index"]


def test_a_complete_producer_must_hold_the_whole_catalogue(store: Path) -> None:
    producer = f"{SUBJECT}/{PRODUCER}"
    index.write(store, {producer})
    expected = {
        producer: {
            f"{ENGINE}/{LINEAR}": [*sorted(read_manifest(store, LINEAR)["files"]), "package"],
            f"{ENGINE}/{OBSERVER}": sorted(read_manifest(store, OBSERVER)["files"]),
            f"{ENGINE}/conv2d": ["input"],
        }
    }
    found = {(gid, fmt): msg for gid, fmt, msg in index.problems(store, expected)}
    assert set(found) == {(LINEAR_ID, "package"), (f"{producer}/{ENGINE}/conv2d", "index")}
    assert "missing from its manifest" in found[(LINEAR_ID, "package")]
    assert "missing from the store" in found[(f"{producer}/{ENGINE}/conv2d", "index")]
    # a producer the index does not mark complete (a past one): the index alone decides
    index.write(store)
    p = index.path(store)
    data = json.loads(p.read_text())
    data["complete"] = []
    p.write_text(json.dumps(data))
    assert index.problems(store, expected) == []


def test_regeneration_updates_the_index(tmp_path: Path) -> None:
    from harness.generate import generate

    store = tmp_path / "golden"
    generate(store, subjects=[SUBJECT], case_glob="per_tensor_observer", engines=[ENGINE])
    data = json.loads(index.path(store).read_text())
    (gid,) = data["goldens"]
    manifest = store / gid / "manifest.json"
    assert data["goldens"][gid]["manifest"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert data["complete"] == []  # a filtered run covers only part of the catalogue
    assert index_failures(store) == {}


def test_a_format_the_case_does_not_declare_is_never_loaded(store: Path, policy) -> None:
    from .reliability_helpers import run_checks

    # a package entry added to a golden whose case writes no package (re-signed, indexed)
    data = read_manifest(store, OBSERVER)
    data["files"]["package"] = data["files"]["input"]
    write_manifest(store, OBSERVER, data)
    indexed(store)

    (outcome,) = run_checks(store, OBSERVER, {"package"}, policy)

    assert outcome.kind == "failed"
    assert "format not declared by the golden's case" in outcome.message
