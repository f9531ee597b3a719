"""Integrity first: every golden file is proven intact (manifest, path, size, sha256, zip shape)
before any loader sees it, and every problem is that golden's failure with a clear message."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from harness.manifest import SCHEMA_VERSION
from harness.verify import collect

from .reliability_helpers import (
    LINEAR,
    OBSERVER,
    deflate_bomb_zip,
    file_of,
    manifest_file,
    read_manifest,
    replace_file,
    run_checks,
    write_manifest,
)


def only(outcomes: list, fmt: str):
    (outcome,) = [o for o in outcomes if o.fmt == fmt]
    return outcome


def test_pristine_copies_of_real_goldens_pass_every_check(store: Path, policy) -> None:
    outcomes = run_checks(store, OBSERVER, policy=policy)
    assert {o.fmt for o in outcomes} == set(read_manifest(store, OBSERVER)["files"])
    assert [o for o in outcomes if o.kind != "passed"] == []


def test_a_changed_byte_fails_naming_the_file_and_both_hashes(store: Path, policy) -> None:
    path = file_of(store, OBSERVER, "state_dict")
    recorded = read_manifest(store, OBSERVER)["files"]["state_dict"]["sha256"]
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    actual = hashlib.sha256(bytes(blob)).hexdigest()

    outcome = only(run_checks(store, OBSERVER, {"state_dict"}, policy), "state_dict")

    assert outcome.kind == "failed"
    assert str(path) in outcome.message
    assert f"expected sha256 {recorded}" in outcome.message
    assert f"actual sha256 {actual}" in outcome.message


def test_a_file_bigger_than_the_limit_is_refused_without_being_read(
    store: Path, policy, monkeypatch
) -> None:
    import harness.integrity as integrity

    # A 1 MiB limit stands in for the 256 MiB default so the test writes 2 MiB, not gigabytes.
    monkeypatch.setattr(integrity, "MAX_FILE_BYTES", 1 << 20)
    path = file_of(store, OBSERVER, "state_dict")
    with open(path, "ab") as f:
        f.truncate(2 << 20)  # sparse: no bytes written
    read = []
    monkeypatch.setattr(integrity, "_sha256_regular", lambda *a: read.append(a) or "0" * 64)

    outcome = only(run_checks(store, OBSERVER, {"state_dict"}, policy), "state_dict")

    assert outcome.kind == "failed"
    assert "over the 1048576-byte limit; not hashed" in outcome.message
    assert read == []


def test_a_symlink_to_an_identical_copy_outside_the_store_is_refused(
    store: Path, policy, tmp_path: Path
) -> None:
    # The hash would match: only the symlink rule stops a golden from reading outside the store.
    path = file_of(store, OBSERVER, "state_dict")
    outside = tmp_path / "outside.pt"
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)

    outcome = only(run_checks(store, OBSERVER, {"state_dict"}, policy), "state_dict")

    assert outcome.kind == "failed"
    assert "is a symlink" in outcome.message and str(outside) in outcome.message


def test_a_fifo_in_place_of_a_file_is_refused_without_blocking(store: Path, policy) -> None:
    path = file_of(store, OBSERVER, "input")
    path.unlink()
    os.mkfifo(path)  # opening it for reading would block forever

    outcome = only(run_checks(store, OBSERVER, {"input"}, policy), "input")

    assert outcome.kind == "failed"
    assert "is not a regular file" in outcome.message


def test_a_manifest_path_leaving_the_producer_folder_is_refused(store: Path, policy) -> None:
    data = read_manifest(store, OBSERVER)
    data["files"]["state_dict"]["path"] = "../../../../../etc/passwd"
    write_manifest(store, OBSERVER, data)

    (outcome,) = run_checks(store, OBSERVER, policy=policy)

    assert outcome.fmt == "manifest" and outcome.kind == "failed"
    assert "must stay inside the producer folder" in outcome.message
    assert "'state_dict'" in outcome.message


def test_a_malformed_manifest_is_one_failing_check_and_the_other_goldens_still_run(
    store: Path, policy
) -> None:
    manifest_file(store, LINEAR).write_text('{"schema": 1, "files": {')

    items = collect(store)  # must not raise

    broken = [i for i in items if i.golden.case == LINEAR]
    assert [i.fmt for i in broken] == ["manifest"]
    assert any(i.golden.case == OBSERVER for i in items)
    (outcome,) = run_checks(store, LINEAR, policy=policy)
    assert outcome.kind == "failed"
    assert "is not valid JSON" in outcome.message and str(manifest_file(store, LINEAR)) in (
        outcome.message
    )


def test_a_golden_folder_without_manifest_is_reported(store: Path, policy) -> None:
    manifest_file(store, OBSERVER).unlink()

    (outcome,) = run_checks(store, OBSERVER, policy=policy)

    assert outcome.kind == "failed"
    assert "manifest.json is missing" in outcome.message


def test_a_manifest_swapped_between_goldens_is_refused(store: Path, policy) -> None:
    # Both manifests are valid and their files intact; only the folder says which golden it is.
    a, b = manifest_file(store, LINEAR), manifest_file(store, OBSERVER)
    a_text, b_text = a.read_text(), b.read_text()
    a.write_text(b_text)
    b.write_text(a_text)

    (outcome,) = run_checks(store, LINEAR, policy=policy)

    assert outcome.kind == "failed"
    assert f"says case '{OBSERVER}' but lies in the folder of case '{LINEAR}'" in outcome.message


def test_a_newer_golden_schema_asks_to_upgrade_qbc_naming_file_and_both_versions(
    store: Path, policy
) -> None:
    data = read_manifest(store, OBSERVER)
    data["schema"] = SCHEMA_VERSION + 1
    write_manifest(store, OBSERVER, data)

    (outcome,) = run_checks(store, OBSERVER, policy=policy)

    assert outcome.kind == "failed"
    assert str(manifest_file(store, OBSERVER)) in outcome.message
    assert f"golden schema {SCHEMA_VERSION + 1}, newer than this qbc" in outcome.message
    assert f"reads schema {SCHEMA_VERSION}" in outcome.message
    assert "upgrade qbc" in outcome.message


def test_a_huge_declared_size_is_refused_from_the_manifest_alone(store: Path, policy) -> None:
    data = read_manifest(store, OBSERVER)
    data["files"]["state_dict"]["size"] = 1 << 40  # 1 TiB
    write_manifest(store, OBSERVER, data)

    (outcome,) = run_checks(store, OBSERVER, policy=policy)

    assert outcome.kind == "failed"
    assert f"declared size {1 << 40} bytes is over the" in outcome.message


def test_a_zip_bomb_with_a_matching_hash_is_refused_before_any_loader_opens_it(
    store: Path, policy, tmp_path: Path, monkeypatch
) -> None:
    import dataclasses

    from harness.formats import FORMATS, get_format

    bomb = tmp_path / "bomb.pt"
    deflate_bomb_zip(bomb, "archive/data.pkl", 2 << 30)  # inflates to 2 GiB of zeros
    replace_file(store, LINEAR, "state_dict", bomb.read_bytes())
    loads = []
    fmt = get_format("state_dict")
    monkeypatch.setitem(
        FORMATS, "state_dict", dataclasses.replace(fmt, read=lambda *a: loads.append(a))
    )

    outcome = only(run_checks(store, LINEAR, {"state_dict"}, policy), "state_dict")

    assert outcome.kind == "failed"
    assert "would decompress to more than" in outcome.message
    assert str(2 << 30) in outcome.message
    assert loads == []


def test_zip_entries_with_forged_sizes_are_refused(store: Path, policy) -> None:
    # Central-directory "uncompressed size" of the first stored entry set to 3 GiB: a reader
    # trusting it would allocate 3 GiB for a few bytes.
    path = file_of(store, OBSERVER, "state_dict")
    blob = bytearray(path.read_bytes())
    cd = blob.index(b"PK\x01\x02")
    blob[cd + 24 : cd + 28] = (3 << 30).to_bytes(4, "little")
    replace_file(store, OBSERVER, "state_dict", bytes(blob))

    outcome = only(run_checks(store, OBSERVER, {"state_dict"}, policy), "state_dict")

    assert outcome.kind == "failed"
    assert f"claims {3 << 30} bytes" in outcome.message


def test_the_committed_store_passes_every_integrity_rule() -> None:
    # No false alarms at scale: every file of every committed golden is proven intact.
    from harness.store import iter_goldens

    from .reliability_helpers import COMMITTED

    goldens = iter_goldens(COMMITTED)
    assert goldens, "the committed store is empty"
    assert [g.id for g in goldens if g.problem] == []
    for g in goldens:
        for fmt in g.formats:
            assert g.path(fmt).is_relative_to(g.producer_dir)


def test_a_hard_linked_golden_file_is_refused(store: Path, tmp_path: Path, policy) -> None:
    # issue 12: a graph.txt hard-linked to another file was read, and echoed in the diff
    from .reliability_helpers import LINEAR, file_of, run_checks

    graph = file_of(store, LINEAR, "graph")
    os.link(graph, tmp_path / "elsewhere")

    (outcome,) = run_checks(store, LINEAR, {"graph"}, policy)

    assert outcome.kind == "failed"
    assert "hard links" in outcome.message


def test_a_huge_graph_signature_is_neither_read_nor_echoed(store: Path, policy) -> None:
    # issue 12: a 20 MB graph.txt gave 21 MB of output and JSON
    from .reliability_helpers import LINEAR, replace_file, run_checks

    replace_file(store, LINEAR, "graph", b"op: aten.x\n" * (2 << 20))  # 22 MB, re-signed

    (outcome,) = run_checks(store, LINEAR, {"graph"}, policy)

    assert outcome.kind == "failed"
    assert "graph signature too large" in outcome.message
    assert len(outcome.message) < 2000


def test_a_graph_diff_is_capped(store: Path, policy) -> None:
    from .reliability_helpers import LINEAR, replace_file, run_checks

    replace_file(store, LINEAR, "graph", b"op: aten.x\n" * 50_000)  # 550 KB, under the limit

    (outcome,) = run_checks(store, LINEAR, {"graph"}, policy)

    assert outcome.kind == "failed"
    assert "graph signature changed" in outcome.message
    assert "more lines" in outcome.message and len(outcome.message) < 25_000
