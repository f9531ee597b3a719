"""Fuzzing: hundreds of corrupted and hostile variants of two real goldens, each of which must be
reported as that golden's failure (a clear GoldenFailure / IntegrityError naming the golden),
never as a raw exception, a crash or a hang of the run.

Each variant is a fresh copy of the two goldens with one mutation; the runner's per-check
function (``harness.verify.run_check``) runs on the checks the mutation touches. Families:

- raw file damage, manifest untouched (bit flips, truncation, empty, appended bytes, deleted
  files, files swapped within and between goldens, symlinks out of the store, FIFOs, folders);
- manifest damage (truncated / garbage JSON, bit flips in the fields the runner relies on, wrong
  schema versions, huge or ill-typed sizes, ill-typed or escaping entries, identity mismatches,
  missing / special manifest files);
- zip archives that must not reach a loader even with a matching hash (gigabyte bombs, forged
  sizes, too many entries, escaping names, foreign compression);
- re-signed damage: the manifest is rewritten to match the damaged file, so the loaders
  themselves (torch.load, TorchScript, safetensors) face bit flips, truncation and swapped files.
  Truncated, emptied and cross-golden files must fail; a bit flip may land where it changes
  nothing (zip padding, a low mantissa bit), so re-signed flips must only fail cleanly or pass.

Every single check must finish within :data:`BOUND_S` seconds (the isolation timeout is set to
the same bound, so a hang would show up as a failure, not stall the run).

Set ``QBC_FUZZ_REPORT=path.json`` to write the figures (variants, outcomes, slowest check).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import harness.isolation as isolation
from harness.manifest import SCHEMA_VERSION

from .reliability_helpers import (
    COMMITTED,
    ENGINE,
    LINEAR,
    OBSERVER,
    PRODUCER,
    SUBJECT,
    deflate_bomb_zip,
    file_of,
    manifest_file,
    read_manifest,
    resign,
    run_checks,
    write_manifest,
)

BOUND_S = 20.0
SEED = 20261123

#: the formats of the two goldens, from the committed manifests
FILES: dict[str, list[str]] = {
    case: sorted(
        json.loads((COMMITTED / SUBJECT / PRODUCER / ENGINE / case / "manifest.json").read_text())[
            "files"
        ]
    )
    for case in (LINEAR, OBSERVER)
}
ALL_FILES = [(case, fmt) for case, fmts in FILES.items() for fmt in fmts]
OTHER = {LINEAR: OBSERVER, OBSERVER: LINEAR}
SD = "state_dict"

Mutation = Callable[[Path, Path], "set[str] | None"]


@dataclass(frozen=True)
class Variant:
    family: str
    case: str
    label: str
    mutate: Mutation  # (store, scratch outside the store) -> formats to check (None: diff)
    must_fail: bool = True


# ------------------------------------------------------------------------------------------
# raw file damage (manifest untouched)


def _rewrite(fn: Callable[[bytes], bytes], case: str, fmt: str, sign: bool = False) -> Mutation:
    def mutate(store: Path, scratch: Path) -> set[str]:
        path = file_of(store, case, fmt)
        path.write_bytes(fn(path.read_bytes()))
        if sign:
            resign(store, case, fmt)
        return {fmt}

    return mutate


def _flip(pos_frac: float, bit: int) -> Callable[[bytes], bytes]:
    def fn(blob: bytes) -> bytes:
        b = bytearray(blob)
        b[int(pos_frac * len(b))] ^= 1 << bit
        return bytes(b)

    return fn


def _truncate(frac: float) -> Callable[[bytes], bytes]:
    return lambda blob: blob[: int(frac * len(blob))]


def _with_bytes_of(case: str, fmt: str, src_case: str, src_fmt: str, sign: bool) -> Mutation:
    def mutate(store: Path, scratch: Path) -> set[str]:
        file_of(store, case, fmt).write_bytes(file_of(store, src_case, src_fmt).read_bytes())
        if sign:
            resign(store, case, fmt)
        return {fmt}

    return mutate


def _replace_path(case: str, fmt: str, make: Callable[[Path, Path], None]) -> Mutation:
    def mutate(store: Path, scratch: Path) -> set[str]:
        path = file_of(store, case, fmt)
        make(path, scratch)
        return {fmt}

    return mutate


def _symlink_outside_copy(path: Path, scratch: Path) -> None:
    outside = scratch / f"copy-{path.name}"
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)


def _symlink_to(target: str) -> Callable[[Path, Path], None]:
    def make(path: Path, scratch: Path) -> None:
        path.unlink()
        path.symlink_to(target)

    return make


def _fifo(path: Path, scratch: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _folder(path: Path, scratch: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "data.pkl").write_bytes(b"x")


def _delete(path: Path, scratch: Path) -> None:
    path.unlink()


def _move_dir_outside(case: str, rel: Callable[[Path], Path]) -> Mutation:
    def mutate(store: Path, scratch: Path) -> set[str]:
        inside = rel(store)
        outside = scratch / f"moved-{inside.name}"
        shutil.move(str(inside), outside)
        inside.symlink_to(outside, target_is_directory=True)
        return set(FILES[case])

    return mutate


def raw_variants(rng: random.Random) -> list[Variant]:
    out: list[Variant] = []
    for case, fmt in ALL_FILES:
        for i in range(12):
            pos, bit = rng.random(), rng.randrange(8)
            out.append(
                Variant("bit flip", case, f"{fmt} flip {i}", _rewrite(_flip(pos, bit), case, fmt))
            )
        for i in range(8):
            out.append(
                Variant(
                    "truncation",
                    case,
                    f"{fmt} cut {i}",
                    _rewrite(_truncate(rng.random()), case, fmt),
                )
            )
        out.append(Variant("empty file", case, fmt, _rewrite(lambda b: b"", case, fmt)))
        junk = rng.randbytes(rng.randrange(1, 4096))
        out.append(
            Variant("appended bytes", case, fmt, _rewrite(lambda b, j=junk: b + j, case, fmt))
        )
        out.append(Variant("deleted file", case, fmt, _replace_path(case, fmt, _delete)))
        out.append(
            Variant(
                "symlink out of the store",
                case,
                fmt,
                _replace_path(case, fmt, _symlink_outside_copy),
            )
        )
    shared = sorted(set(FILES[LINEAR]) & set(FILES[OBSERVER]))
    for case in (LINEAR, OBSERVER):
        for fmt in shared:
            out.append(
                Variant(
                    "swapped between goldens",
                    case,
                    fmt,
                    _with_bytes_of(case, fmt, OTHER[case], fmt, False),
                )
            )
    for case, a, b in [
        (LINEAR, "state_dict", "state_dict_legacy"),
        (LINEAR, "scripted", "traced"),
        (LINEAR, "input", "expected"),
        (OBSERVER, "state_dict", "safetensors"),
        (OBSERVER, "input", "expected"),
    ]:
        for x, y in ((a, b), (b, a)):
            out.append(
                Variant(
                    "swapped within a golden",
                    case,
                    f"{x}<-{y}",
                    _with_bytes_of(case, x, case, y, False),
                )
            )
    for case, fmt in [
        (LINEAR, "scripted"),
        (LINEAR, "state_dict"),
        (OBSERVER, "input"),
        (OBSERVER, "safetensors"),
    ]:
        for target in ("/etc/passwd", "/dev/zero", "/dev/urandom", "/nonexistent/qbc"):
            out.append(
                Variant(
                    "symlink to a system file",
                    case,
                    f"{fmt}->{target}",
                    _replace_path(case, fmt, _symlink_to(target)),
                )
            )
        out.append(Variant("fifo in place of a file", case, fmt, _replace_path(case, fmt, _fifo)))
        out.append(
            Variant("folder in place of a file", case, fmt, _replace_path(case, fmt, _folder))
        )
    for case in (LINEAR, OBSERVER):
        out.append(
            Variant(
                "golden folder symlinked out of the store",
                case,
                case,
                _move_dir_outside(case, lambda s, c=case: s / SUBJECT / PRODUCER / ENGINE / c),
            )
        )
    out.append(
        Variant(
            "blobs folder symlinked out of the store",
            OBSERVER,
            "blobs",
            _move_dir_outside(OBSERVER, lambda s: s / SUBJECT / PRODUCER / "blobs"),
        )
    )
    return out


# ------------------------------------------------------------------------------------------
# manifest damage


def _manifest_bytes(fn: Callable[[bytes], bytes], case: str) -> Mutation:
    def mutate(store: Path, scratch: Path) -> None:
        path = manifest_file(store, case)
        path.write_bytes(fn(path.read_bytes()))
        return None

    return mutate


def _manifest_edit(fn: Callable[[dict[str, Any]], None], case: str) -> Mutation:
    def mutate(store: Path, scratch: Path) -> None:
        data = read_manifest(store, case)
        fn(data)
        write_manifest(store, case, data)
        return None

    return mutate


def _field_span(text: bytes, case: str, field: tuple[str, ...]) -> tuple[int, int]:
    """Byte span of the value (or, for ("key", fmt), the key) of one manifest field."""
    kind = field[0]
    if kind == "key":
        start = text.index(f'"{field[1]}": {{'.encode()) + 1
        return start, start + len(field[1])
    if kind == "entry":
        block = text.index(f'"{field[1]}": {{'.encode())
        start = text.index(f'"{field[2]}": '.encode(), block) + len(field[2]) + 4
    else:
        start = text.rindex(f'"{kind}": '.encode()) + len(kind) + 4
    end = start
    while text[end : end + 1] not in (b",", b"\n", b"}"):
        end += 1
    if text[start : start + 1] == b'"':  # inside the quotes
        start, end = start + 1, end - 1
    return start, end


def _flip_field(case: str, field: tuple[str, ...], rng_pos: float, bit: int) -> Mutation:
    def fn(text: bytes) -> bytes:
        start, end = _field_span(text, case, field)
        b = bytearray(text)
        b[start + int(rng_pos * (end - start))] ^= 1 << bit
        return bytes(b)

    return _manifest_bytes(fn, case)


def _set_files_entry(fmt: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def fn(data: dict[str, Any]) -> None:
        if value is _DELETE:
            del data["files"][fmt][key]
        else:
            data["files"][fmt][key] = value

    return fn


_DELETE = object()


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def fn(data: dict[str, Any]) -> None:
        if value is _DELETE:
            del data[key]
        else:
            data[key] = value

    return fn


def _manifest_special(make: Callable[[Path, Path], None], case: str) -> Mutation:
    def mutate(store: Path, scratch: Path) -> None:
        make(manifest_file(store, case), scratch)
        return None

    return mutate


def _oversized_manifest(path: Path, scratch: Path) -> None:
    data = json.loads(path.read_text())
    data["padding"] = "x" * (5 << 20)  # valid JSON, 5 MiB: over the 4 MiB manifest limit
    path.write_text(json.dumps(data))


def manifest_variants(rng: random.Random) -> list[Variant]:
    out: list[Variant] = []
    for case in (LINEAR, OBSERVER):
        size = manifest_file(COMMITTED, case).stat().st_size
        for i in range(10):
            cut = rng.randrange(size)
            out.append(
                Variant(
                    "manifest truncated",
                    case,
                    f"cut {i}",
                    _manifest_bytes(lambda b, c=cut: b[:c], case),
                )
            )
        for label, blob in [
            ("empty", b""),
            ("null", b"null"),
            ("list", b"[]"),
            ("string", b'"manifest"'),
            ("empty object", b"{}"),
            ("deep nesting", b"[" * 100_000),
            ("not utf-8", b"\xff\xfe{\x00"),
            ("random bytes", rng.randbytes(512)),
        ]:
            out.append(
                Variant("manifest garbage", case, label, _manifest_bytes(lambda b, x=blob: x, case))
            )
        fields: list[tuple[str, ...]] = [("schema",), ("subject",), ("engine",), ("case",), ("id",)]
        for fmt in FILES[case]:
            fields += [
                ("key", fmt),
                ("entry", fmt, "path"),
                ("entry", fmt, "sha256"),
                ("entry", fmt, "size"),
            ]
        for i in range(15):
            field = rng.choice(fields)
            out.append(
                Variant(
                    "manifest field bit flip",
                    case,
                    f"{'/'.join(field)} flip {i}",
                    _flip_field(case, field, rng.random(), rng.randrange(8)),
                )
            )
        for value in [0, SCHEMA_VERSION + 1, 99, -1, str(SCHEMA_VERSION), None, 1.5, True, _DELETE]:
            out.append(
                Variant(
                    "wrong schema version",
                    case,
                    repr(value),
                    _manifest_edit(_set("schema", value), case),
                )
            )
        fmt = SD
        for value in [1 << 40, 1 << 63, 10**30, -1, "12", 1e9, None]:
            out.append(
                Variant(
                    "huge or ill-typed declared size",
                    case,
                    repr(value),
                    _manifest_edit(_set_files_entry(fmt, "size", value), case),
                )
            )
        for label, edit in [
            ("files is a list", _set("files", [])),
            ("files is null", _set("files", None)),
            ("files is empty", _set("files", {})),
            ("files missing", _set("files", _DELETE)),
            ("entry is a list", lambda d: d["files"].__setitem__(SD, [])),
            ("entry without path", _set_files_entry(fmt, "path", _DELETE)),
            ("entry without sha256", _set_files_entry(fmt, "sha256", _DELETE)),
            (
                "uppercase sha256",
                lambda d: d["files"][SD].__setitem__("sha256", d["files"][SD]["sha256"].upper()),
            ),
            ("absolute path", _set_files_entry(fmt, "path", "/etc/passwd")),
            ("escaping path", _set_files_entry(fmt, "path", "../../../../etc/passwd")),
            ("NUL in path", _set_files_entry(fmt, "path", "blobs/x\x00.pt")),
            ("empty path", _set_files_entry(fmt, "path", "")),
            ("unknown format", lambda d: d["files"].__setitem__("pickle_jar", d["files"][SD])),
        ]:
            out.append(Variant("ill-typed manifest entry", case, label, _manifest_edit(edit, case)))
        for key, value in [("subject", "qbc"), ("engine", "x86"), ("case", OTHER[case])]:
            out.append(
                Variant(
                    "manifest identity mismatch", case, key, _manifest_edit(_set(key, value), case)
                )
            )
        out.append(
            Variant(
                "manifest identity mismatch",
                case,
                "producer",
                _manifest_edit(
                    lambda d: d["producer"].__setitem__("id", "torch-9.9.9_qbc-9.9.9"), case
                ),
            )
        )
        for label, make in [
            ("missing", _delete),
            ("folder", _folder),
            ("fifo", _fifo),
            ("symlink to an outside copy", _symlink_outside_copy),
            ("over the size limit", _oversized_manifest),
        ]:
            out.append(Variant("manifest file special", case, label, _manifest_special(make, case)))
    return out


# ------------------------------------------------------------------------------------------
# zip archives refused even with a matching hash


def _signed_file(case: str, fmt: str, make: Callable[[Path, Path], bytes]) -> Mutation:
    def mutate(store: Path, scratch: Path) -> set[str]:
        path = file_of(store, case, fmt)
        path.write_bytes(make(path, scratch))
        resign(store, case, fmt)
        return {fmt}

    return mutate


def _bomb(path: Path, scratch: Path) -> bytes:
    bomb = scratch / "bomb.zip"
    deflate_bomb_zip(bomb, "archive/data.pkl", 2 << 30)  # 2 GiB of zeros from ~2 MB
    return bomb.read_bytes()


def _forge_first_entry(
    offset: int, value: int, method: int | None = None
) -> Callable[[Path, Path], bytes]:
    """Patch a central-directory field of the first entry (24: uncompressed size)."""

    def make(path: Path, scratch: Path) -> bytes:
        b = bytearray(path.read_bytes())
        cd = b.index(b"PK\x01\x02")
        b[cd + offset : cd + offset + 4] = struct.pack("<I", value)
        if method is not None:
            b[cd + 10 : cd + 12] = struct.pack("<H", method)
        return bytes(b)

    return make


def _zip_with(
    entries: Callable[[zipfile.ZipFile], None], compression: int = zipfile.ZIP_STORED
) -> Callable[[Path, Path], bytes]:
    def make(path: Path, scratch: Path) -> bytes:
        out = scratch / "crafted.zip"
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", compression) as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info))
            entries(dst)
        return out.read_bytes()

    return make


def _many_entries(zf: zipfile.ZipFile) -> None:
    for i in range(10_001):
        zf.writestr(f"archive/extra/{i}", b"")


def zip_variants() -> list[Variant]:
    out = [
        Variant("zip bomb", LINEAR, f"{fmt} 2 GiB", _signed_file(LINEAR, fmt, _bomb))
        for fmt in ("state_dict", "scripted", "traced", "input")
    ]
    out.append(
        Variant(
            "zip bomb", OBSERVER, "state_dict 2 GiB", _signed_file(OBSERVER, "state_dict", _bomb)
        )
    )
    for case, fmt in [(LINEAR, "state_dict"), (LINEAR, "scripted"), (OBSERVER, "expected")]:
        out.append(
            Variant(
                "zip forged sizes",
                case,
                f"{fmt} 3 GiB stored",
                _signed_file(case, fmt, _forge_first_entry(24, 3 << 30)),
            )
        )
        out.append(
            Variant(
                "zip forged sizes",
                case,
                f"{fmt} 3 GiB deflated",
                _signed_file(case, fmt, _forge_first_entry(24, 3 << 30, method=8)),
            )
        )
    out.append(
        Variant(
            "zip too many entries",
            LINEAR,
            "state_dict",
            _signed_file(LINEAR, "state_dict", _zip_with(_many_entries)),
        )
    )
    for name in ("../../evil.py", "/etc/cron.d/evil", "archive/../../x"):
        out.append(
            Variant(
                "zip escaping entry name",
                LINEAR,
                name,
                _signed_file(LINEAR, "traced", _zip_with(lambda z, n=name: z.writestr(n, b"x"))),
            )
        )
    out.append(
        Variant(
            "zip foreign compression",
            OBSERVER,
            "bzip2",
            _signed_file(
                OBSERVER,
                "state_dict",
                _zip_with(lambda z: z.writestr("archive/x", b"x" * 100), zipfile.ZIP_BZIP2),
            ),
        )
    )
    return out


# ------------------------------------------------------------------------------------------
# re-signed damage: the loaders themselves face it


LOADED = {
    LINEAR: ["state_dict", "state_dict_legacy", "scripted", "traced"],
    OBSERVER: ["state_dict", "state_dict_legacy", "safetensors", "input", "expected"],
}


def resigned_variants(rng: random.Random) -> list[Variant]:
    out: list[Variant] = []
    for case, fmts in LOADED.items():
        for fmt in fmts:
            for i in range(5):
                pos, bit = rng.random(), rng.randrange(8)
                out.append(
                    Variant(
                        "re-signed bit flip",
                        case,
                        f"{fmt} flip {i}",
                        _rewrite(_flip(pos, bit), case, fmt, sign=True),
                        must_fail=False,
                    )
                )
            for i in range(3):
                frac = rng.random()
                out.append(
                    Variant(
                        "re-signed truncation",
                        case,
                        f"{fmt} cut {i}",
                        _rewrite(_truncate(frac), case, fmt, sign=True),
                    )
                )
            out.append(
                Variant(
                    "re-signed empty file", case, fmt, _rewrite(lambda b: b"", case, fmt, sign=True)
                )
            )
    for case, fmt, src_case, src_fmt, must_fail in [
        (LINEAR, "state_dict", OBSERVER, "state_dict", True),
        (LINEAR, "state_dict_legacy", OBSERVER, "state_dict_legacy", True),
        (OBSERVER, "safetensors", LINEAR, "state_dict", True),
        (OBSERVER, "input", LINEAR, "input", True),
        (OBSERVER, "expected", LINEAR, "expected", True),
        # both are the same module saved two ways: may legitimately still pass
        (LINEAR, "scripted", LINEAR, "traced", False),
    ]:
        out.append(
            Variant(
                "re-signed swapped file",
                case,
                f"{fmt}<-{src_case}/{src_fmt}",
                _with_bytes_of(case, fmt, src_case, src_fmt, True),
                must_fail=must_fail,
            )
        )
    return out


FAMILIES: dict[str, list[Variant]] = {
    "raw": raw_variants(random.Random(SEED)),
    "manifest": manifest_variants(random.Random(SEED + 1)),
    "zip": zip_variants(),
    "resigned": resigned_variants(random.Random(SEED + 2)),
}


# ------------------------------------------------------------------------------------------
# running


@dataclass
class Record:
    variant: Variant
    outcomes: list[Any]
    problems: list[str]


def _checks_from_manifest_diff(store: Path, case: str) -> set[str]:
    """Formats whose manifest entry differs from the pristine one (or that are new)."""
    pristine = json.loads(manifest_file(COMMITTED, case).read_text())["files"]
    path = manifest_file(store, case)
    if path.is_symlink() or not path.is_file():
        return set()  # never open a FIFO (it would block) or follow a link
    try:
        files = json.loads(path.read_bytes())["files"]
        return {k for k, v in files.items() if pristine.get(k) != v}
    except Exception:
        return set()  # unusable manifest: its single "manifest" check runs anyway


def run_variant(variant: Variant, pristine: Path, root: Path, policy: Any) -> Record:
    store, scratch, trash = root / "golden", root / "scratch", root / "trash"
    trash.mkdir(exist_ok=True)
    for path in (store, scratch):
        if path.exists():
            # A rename, not rmtree: deleting folders is slow on overlay file systems, and the
            # fixed store path keeps the runner's cache of today's builds warm. pytest removes
            # old temporary folders itself.
            path.rename(trash / f"{path.name}-{uuid.uuid4().hex}")
    shutil.copytree(pristine, store, symlinks=True)
    scratch.mkdir()
    formats = variant.mutate(store, scratch)
    if formats is None:
        formats = _checks_from_manifest_diff(store, variant.case)
    outcomes = run_checks(store, variant.case, formats, policy)
    problems = []
    gid = f"{SUBJECT}/{PRODUCER}/{ENGINE}/{variant.case}"
    for o in outcomes:
        if o.kind == "error":
            problems.append(f"raw exception leaked from check {o.fmt}: {o.message[:300]}")
        if o.seconds > BOUND_S:
            problems.append(f"check {o.fmt} took {o.seconds:.1f} s (bound {BOUND_S} s)")
        if o.kind == "failed" and gid not in o.message and f"case {variant.case}," not in o.message:
            problems.append(f"failure of {o.fmt} does not name the golden: {o.message[:300]}")
    if variant.must_fail and not any(o.kind == "failed" for o in outcomes):
        problems.append(f"not reported: {[(o.fmt, o.kind) for o in outcomes]}")
    return Record(variant, outcomes, problems)


FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # One work folder for the whole module: stored-input paths repeat, so the runner's cache of
    # today's case build is reused across variants.
    yield tmp_path_factory.mktemp("fuzz")
    report = os.environ.get("QBC_FUZZ_REPORT")
    if report and FIGURES:
        Path(report).write_text(json.dumps(FIGURES, indent=1, sort_keys=True))


def test_the_fuzzer_tries_at_least_500_variants() -> None:
    assert sum(len(v) for v in FAMILIES.values()) >= 500


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_variant_is_that_goldens_clear_failure_within_the_bound(
    family: str, pristine: Path, fuzz_root: Path, policy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(isolation, "LOAD_TIMEOUT", BOUND_S)
    start = time.perf_counter()
    records = [run_variant(v, pristine, fuzz_root, policy) for v in FAMILIES[family]]
    outcomes = [(r, o) for r in records for o in r.outcomes]
    slowest = max(outcomes, key=lambda ro: ro[1].seconds)
    FIGURES[family] = {
        "variants": len(records),
        "checks": len(outcomes),
        "failed_checks": sum(o.kind == "failed" for _, o in outcomes),
        "variants_reported": sum(any(o.kind == "failed" for o in r.outcomes) for r in records),
        "variants_passing_unchanged": sum(
            all(o.kind == "passed" for o in r.outcomes) for r in records
        ),
        "slowest_check_s": round(slowest[1].seconds, 3),
        "slowest_check": f"{slowest[0].variant.family}: {slowest[0].variant.label} ({slowest[1].fmt})",
        "wall_s": round(time.perf_counter() - start, 2),
        "by_family": {
            f: sum(r.variant.family == f for r in records)
            for f in sorted({r.variant.family for r in records})
        },
    }
    problems = [
        f"[{r.variant.family}] {r.variant.case} {r.variant.label}: {p}"
        for r in records
        for p in r.problems
    ]
    assert problems == [], "\n".join(problems[:40])
