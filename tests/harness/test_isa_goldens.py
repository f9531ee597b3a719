"""Per-ISA-class goldens: the generator writes every class this machine reaches, the manifest
lists the files that differ per class, and regen --check compares class by class.

The case used is qbc's dynamic int8 linear on fbgemm: fbgemm's AVX2 kernel forms pair products
in a saturating int16 (vpmaddubsw), AVX512-VNNI's does not, so its expected output differs
between avx2 and avx512_vnni (measured: tools/isa_drift.py) while its input and weights do not.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from harness import isa, regen
from harness.generate import differs, generate
from harness.manifest import sha256_file
from harness.store import iter_goldens

REPO = Path(__file__).resolve().parents[2]
SELECTION = {"subjects": ["qbc"], "case_glob": "linear_dynamic_qint8", "engines": ["fbgemm"]}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("isa") / "golden"
    generate(store, **SELECTION)
    return store


def _golden(store: Path):  # type: ignore[no-untyped-def]
    (golden,) = iter_goldens(store)
    return golden


def test_the_generator_writes_every_class_this_machine_reaches(store: Path) -> None:
    manifest = _golden(store).manifest
    me = isa.detect()
    assert manifest.isa_class == me.cls
    assert manifest.classes == me.reachable()
    # Higher classes and base (fbgemm has no cap below AVX2) are named with the reason.
    assert "base" in manifest.unreachable and "FBGEMM" in manifest.unreachable["base"]
    for cls in isa.CLASSES[isa.rank(me.cls) + 1 :]:
        assert "above this machine's class" in manifest.unreachable[cls]


def test_only_files_that_differ_in_a_class_are_listed_under_it(store: Path) -> None:
    manifest = _golden(store).manifest
    if "avx2" not in manifest.class_files:
        pytest.skip(f"this machine ({isa.detect().describe()}) writes no class below its own")
    # fbgemm's avx2 and avx512 kernels both saturate, VNNI does not: only `expected` differs.
    assert set(manifest.class_files["avx2"]) == {"expected"}
    assert manifest.isa_dependent() == {"expected"}
    avx2 = manifest.files_for("avx2")
    assert avx2["state_dict"] == manifest.files["state_dict"]
    assert avx2["expected"].sha256 != manifest.files["expected"].sha256


def test_a_file_shared_by_two_classes_is_stored_once(store: Path) -> None:
    manifest = _golden(store).manifest
    if not {"avx2", "avx512"} <= set(manifest.class_files):
        pytest.skip("needs a machine that writes avx2 and avx512 below its own class")
    assert manifest.class_files["avx2"]["expected"] == manifest.class_files["avx512"]["expected"]
    blobs = [p.name for p in (_golden(store).producer_dir / "blobs").iterdir()]
    assert len(blobs) == len(set(blobs))


def test_the_manifest_is_schema_2_and_a_schema_1_manifest_still_reads(
    store: Path, tmp_path: Path
) -> None:
    from harness.integrity import load_manifest

    golden = _golden(store)
    data = json.loads((golden.dir / "manifest.json").read_text())
    assert data["schema"] == 2 and data["isa"]["class"] == isa.detect().cls
    # The same golden as schema 1 wrote it: no isa block, the class from machine.isa flags.
    data["schema"] = 1
    del data["isa"]
    data["machine"]["isa"] = {"avx2": True, "avx512": False, "avx512_vnni": False, "amx": False}
    old = tmp_path / "manifest.json"
    old.write_text(json.dumps(data))
    manifest = load_manifest(old, tmp_path)
    assert (manifest.isa_class, manifest.classes, dict(manifest.class_files)) == (
        "avx2",
        ("avx2",),
        {},
    )


def test_a_class_the_golden_does_not_hold_is_a_key_error_naming_the_ones_it_does(
    store: Path,
) -> None:
    manifest = _golden(store).manifest
    with pytest.raises(KeyError, match="holds no files for ISA class 'amx'"):
        manifest.files_for("amx")


def _with_extra_class(src: Path, dest: Path, cls: str) -> Path:
    """A copy of ``src`` whose golden also claims files of class ``cls`` (the own files)."""
    shutil.copytree(src, dest)
    golden = _golden(dest)
    data = json.loads((golden.dir / "manifest.json").read_text())
    data["isa"]["classes"][cls] = {"expected": data["files"]["expected"]}
    (golden.dir / "manifest.json").write_text(json.dumps(data))
    return dest


def test_regen_check_compares_each_class_and_names_a_class_it_cannot_reach(
    store: Path, tmp_path: Path
) -> None:
    committed = _with_extra_class(store, tmp_path / "committed", "amx")
    report = regen.report_changes(
        regen.compare_stores(committed, store, ["qbc"]),
        {"amx": "above this machine's class (test)"},
    )
    assert report.drift == []
    assert report.skipped == {"amx": "above this machine's class (test)"}
    assert set(report.compared) == set(isa.detect().reachable())


def test_regen_check_reports_drift_in_one_class_as_that_class(store: Path, tmp_path: Path) -> None:
    committed = tmp_path / "committed"
    shutil.copytree(store, committed)
    golden = _golden(committed)
    data = json.loads((golden.dir / "manifest.json").read_text())
    lowest = isa.detect().reachable()[0]
    # Point the lowest class's expected output at the input file: a different file.
    entries = data["isa"]["classes"][lowest] if lowest != data["isa"]["class"] else data["files"]
    entries["expected"] = data["files"]["input"]
    (golden.dir / "manifest.json").write_text(json.dumps(data))
    report = regen.report_changes(regen.compare_stores(committed, store, ["qbc"]))
    own = lowest == isa.detect().cls
    where = "/expected: " if own else f"/expected [{lowest}]: "
    assert len(report.drift) == 1 and where in report.drift[0]
    assert report.drifting == {lowest: 1}


def _restamped(src: Path, dest: Path, payload: dict[str, bytes] | None = None) -> Path:
    """``src`` (a zip archive) rewritten as torch <= 2.7's torch.export.save writes a .pt2:
    Python's zipfile stamping every entry with the time of writing, here a second later than
    the original; ``payload`` replaces entries' bytes."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dest, "w") as new:
        for info in old.infolist():
            stamped = zipfile.ZipInfo(info.filename, (2026, 11, 28, 23, 49, 12))
            stamped.compress_type = info.compress_type
            new.writestr(stamped, (payload or {}).get(info.filename, old.read(info)))
    return dest


def test_an_archive_written_again_a_second_later_is_no_class_difference(
    store: Path, tmp_path: Path
) -> None:
    # On torch 2.7.1 every capped class's .pt2 came out "different" by the time stamps alone
    # and was stored again (measured: 10 qbc pt2e goldens held extra .pt2 copies).
    state_dict = _golden(store).path("state_dict")
    again = _restamped(state_dict, tmp_path / "again.pt")
    assert sha256_file(again) != sha256_file(state_dict)
    assert not differs(state_dict, again, "state_dict")
    with zipfile.ZipFile(state_dict) as z:
        last = z.infolist()[-1].filename
        changed = z.read(last)[:-1] + b"?"
    other = _restamped(state_dict, tmp_path / "other.pt", {last: changed})
    assert differs(state_dict, other, "state_dict")


def test_regen_check_finds_no_drift_in_an_archive_written_again_a_second_later(
    store: Path, tmp_path: Path
) -> None:
    committed = tmp_path / "committed"
    shutil.copytree(store, committed)
    golden = _golden(committed)
    again = _restamped(golden.path("state_dict"), tmp_path / "again.pt")
    digest = sha256_file(again)
    blob = f"blobs/{digest[:16]}.pt"
    shutil.copyfile(again, golden.producer_dir / blob)
    data = json.loads((golden.dir / "manifest.json").read_text())
    data["files"]["state_dict"].update(path=blob, sha256=digest, size=again.stat().st_size)
    (golden.dir / "manifest.json").write_text(json.dumps(data))
    report = regen.report_changes(regen.compare_stores(committed, store, ["qbc"]))
    assert report.drift == []
