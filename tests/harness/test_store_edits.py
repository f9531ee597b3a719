"""Acceptance: a one-byte edit of a committed expected output fails exactly that golden.

Both ways a byte can change are covered: behind the manifest's back (integrity error naming file
and hashes) and re-committed with a fresh hash (a statistics message from the tolerance policy).
Checks run in-process over the goldens of the `linear` case on every engine, which is enough to
show the failure stays confined to the edited golden.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import PRODUCER_ID, add_to_byte, golden_dir, manifest, tensor_data_offset

from harness.manifest import sha256_file
from harness.outcomes import GoldenFailure
from harness.policy import Policy
from harness.verify import collect, run_check

EDITED_ENGINE, EDITED_CASE = "qnnpack", "linear"


def run_all(store: Path, cases: tuple[str, ...]) -> dict[str, str | None]:
    """check id -> None if it passed, else the failure message."""
    policy = Policy.load()
    outcome: dict[str, str | None] = {}
    for item in collect(store):
        if item.golden.case not in cases:
            continue
        try:
            run_check(item, policy)
            outcome[item.id] = None
        except GoldenFailure as exc:
            outcome[item.id] = str(exc)
    return outcome


def rewrite_as_new_blob(store: Path, engine: str, case: str, fmt: str, delta: int) -> Path:
    """Copy the golden's `fmt` file to a new blob, add `delta` to its first data byte, and
    re-record it in the manifest (as if someone committed different numbers)."""
    gdir = golden_dir(store, engine, case)
    data = manifest(store, engine, case)
    entry = data["files"][fmt]
    producer_dir = gdir.parent.parent
    edited = producer_dir / "blobs" / "edited-expected.pt"
    shutil.copy(producer_dir / entry["path"], edited)
    add_to_byte(edited, tensor_data_offset(edited), delta)
    entry.update(
        path="blobs/edited-expected.pt", sha256=sha256_file(edited), size=edited.stat().st_size
    )
    (gdir / "manifest.json").write_text(json.dumps(data, indent=1, sort_keys=True))
    return edited


def test_edited_expected_fails_only_that_golden_with_statistics(store_copy: Path) -> None:
    # linear's output is a single quint8 code; +3 on its byte is an error of exactly 3 steps.
    rewrite_as_new_blob(store_copy, EDITED_ENGINE, EDITED_CASE, "expected", delta=3)
    outcome = run_all(store_copy, ("linear",))
    edited_prefix = f"torch_ao/{PRODUCER_ID}/{EDITED_ENGINE}/{EDITED_CASE}/"
    failed = {cid for cid, msg in outcome.items() if msg}
    # Every check comparing against the stored output fails; input and graph do not use it;
    # and the re-signed manifest no longer matches the store index (issue 12).
    assert failed == {
        edited_prefix + f
        for f in ("expected", "state_dict", "state_dict_legacy", "scripted", "traced", "index")
    }
    message = outcome[edited_prefix + "scripted"]
    assert "max error 3 steps" in message
    assert "1 mismatched" in message
    assert "SQNR" in message
    assert f"producer {PRODUCER_ID}" in message and "engine qnnpack" in message
    assert "format scripted" in message
    assert len(outcome) > len(failed) + 15  # the other three engines' checks really ran


def test_byte_edit_behind_the_manifest_fails_integrity_of_exactly_its_users(
    store_copy: Path,
) -> None:
    entry = manifest(store_copy, EDITED_ENGINE, EDITED_CASE)["files"]["expected"]
    blob = store_copy / "torch_ao" / PRODUCER_ID / entry["path"]
    # Content-addressed blobs may be shared (e.g. engines with identical numerics): every golden
    # referencing the blob must fail, and no other.
    users = {
        m.parent.parent.name
        for m in store_copy.rglob("manifest.json")
        if entry["path"] in m.read_text()
    }
    add_to_byte(blob, tensor_data_offset(blob), 1)
    outcome = run_all(store_copy, ("linear",))
    failed = {cid: msg for cid, msg in outcome.items() if msg}
    assert set(failed) == {
        f"torch_ao/{PRODUCER_ID}/{engine}/{EDITED_CASE}/{f}"
        for engine in users
        for f in ("expected", "state_dict", "state_dict_legacy", "scripted", "traced")
    }
    message = next(iter(failed.values()))
    assert str(blob) in message
    assert entry["sha256"] in message and sha256_file(blob) in message


def test_missing_file_is_reported_not_loaded(store_copy: Path) -> None:
    entry = manifest(store_copy, "fbgemm", "linear")["files"]["graph"]
    (store_copy / "torch_ao" / PRODUCER_ID / entry["path"]).unlink()
    item = next(
        i for i in collect(store_copy) if i.id.endswith(f"{PRODUCER_ID}/fbgemm/linear/graph")
    )
    with pytest.raises(AssertionError, match="missing"):
        run_check(item, Policy.load())
