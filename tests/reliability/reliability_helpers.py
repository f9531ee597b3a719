"""Helpers for the reliability tests: small copies of real goldens, re-signing, running checks.

The tests work on copies of two real goldens from the committed store (``fbgemm/linear``: zip
state_dict, legacy pickle, TorchScript scripted/traced, graph text; ``fbgemm/per_tensor_observer``:
safetensors), so every mutation hits a file the runner really reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "golden"
SUBJECT = "torch_ao"
ENGINE = "fbgemm"
LINEAR = "linear"
OBSERVER = "per_tensor_observer"
SMALL_CASES = (LINEAR, OBSERVER)


def committed_producer() -> str:
    """A producer of the committed store that holds both small goldens."""
    for producer in sorted((COMMITTED / SUBJECT).iterdir(), reverse=True):
        if all((producer / ENGINE / c / "manifest.json").is_file() for c in SMALL_CASES):
            return producer.name
    raise FileNotFoundError(f"no producer in {COMMITTED / SUBJECT} has {SMALL_CASES}")


PRODUCER = committed_producer()


def golden_id(case: str) -> str:
    return f"{SUBJECT}/{PRODUCER}/{ENGINE}/{case}"


def copy_goldens(dst: Path, cases: tuple[str, ...] = SMALL_CASES) -> Path:
    """Copy the given goldens (manifest, text files, referenced blobs) into store ``dst``."""
    src_producer = COMMITTED / SUBJECT / PRODUCER
    dst_producer = dst / SUBJECT / PRODUCER
    for case in cases:
        rel = Path(ENGINE) / case
        (dst_producer / rel).mkdir(parents=True, exist_ok=True)
        shutil.copy2(src_producer / rel / "manifest.json", dst_producer / rel / "manifest.json")
        for entry in json.loads((src_producer / rel / "manifest.json").read_text())[
            "files"
        ].values():
            target = dst_producer / entry["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src_producer / entry["path"], target)
    return dst


def manifest_file(store: Path, case: str) -> Path:
    return store / SUBJECT / PRODUCER / ENGINE / case / "manifest.json"


def read_manifest(store: Path, case: str) -> dict[str, Any]:
    return json.loads(manifest_file(store, case).read_text())


def write_manifest(store: Path, case: str, data: dict[str, Any]) -> None:
    manifest_file(store, case).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def file_of(store: Path, case: str, fmt: str) -> Path:
    return store / SUBJECT / PRODUCER / read_manifest(store, case)["files"][fmt]["path"]


def resign(store: Path, case: str, fmt: str) -> None:
    """Rewrite the manifest entry of ``fmt`` to match its (tampered) file: what an attacker who
    controls the whole golden would do, so the loader itself is exercised."""
    data = read_manifest(store, case)
    path = store / SUBJECT / PRODUCER / data["files"][fmt]["path"]
    blob = path.read_bytes()
    data["files"][fmt]["sha256"] = hashlib.sha256(blob).hexdigest()
    data["files"][fmt]["size"] = len(blob)
    write_manifest(store, case, data)


def replace_file(store: Path, case: str, fmt: str, content: bytes, sign: bool = True) -> Path:
    """Put ``content`` in place of the golden's ``fmt`` file (and re-sign it when ``sign``)."""
    path = file_of(store, case, fmt)
    path.write_bytes(content)
    if sign:
        resign(store, case, fmt)
    return path


@dataclass
class Outcome:
    fmt: str
    kind: str  # passed | failed | skipped | error (anything but the runner's own failures)
    message: str
    seconds: float
    error_type: str = ""


def run_checks(
    store: Path, case: str, formats: set[str] | None = None, policy: Any = None
) -> list[Outcome]:
    """Run the runner's per-check function on the checks of one golden (all, or ``formats``;
    the ``manifest`` check of a golden with an unusable manifest always runs)."""
    from harness.outcomes import GoldenFailure, GoldenSkip, IntegrityError
    from harness.policy import Policy
    from harness.verify import collect, plan_checks, run_check

    policy = policy or Policy.load(None)
    out = []
    items = [
        item
        for item in collect(store)
        if (item.golden.subject, item.golden.producer, item.golden.engine, item.golden.case)
        == (SUBJECT, PRODUCER, ENGINE, case)
        and (formats is None or item.fmt in formats or item.fmt == "manifest")
    ]
    # announced as the pytest plugin does: a golden's TorchScript loads share a worker child
    plan_checks(items)
    for item in items:
        start = time.perf_counter()
        try:
            run_check(item, policy)
            kind, message, etype = "passed", "", ""
        except (GoldenFailure, IntegrityError) as exc:
            kind, message, etype = "failed", str(exc), type(exc).__name__
        except GoldenSkip as exc:
            kind, message, etype = "skipped", str(exc), "GoldenSkip"
        except Exception as exc:  # a bug: the runner let a raw exception through
            kind, message, etype = "error", f"{type(exc).__name__}: {exc}", type(exc).__name__
        out.append(Outcome(item.fmt, kind, message, time.perf_counter() - start, etype))
    return out


def snapshot(root: Path) -> dict[str, Any]:
    """Every entry under ``root`` (not following symlinks): type, mode and bytes / link target."""
    out: dict[str, Any] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode)
            else:
                out[rel] = ("file", st.st_mode, p.read_bytes())
    return out


def deflate_bomb_zip(path: Path, entry: str, size: int) -> None:
    """A zip whose single deflated ``entry`` really inflates to ``size`` zero bytes.

    The deflate stream is built from one full-flush block of 1 MiB of zeros repeated (a full
    flush resets the compressor, so every block is the same bytes), so a gigabyte bomb costs a
    few MB and milliseconds. The CRC is not computed (it would mean inflating the bomb); the
    archive is refused on its declared sizes before anything reads the CRC.
    """
    mib = 1 << 20
    assert size % mib == 0
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(bytes(mib)) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(bytes(mib)) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.flush()
    data = first + block * (size // mib - 1) + tail
    name = entry.encode()
    crc, csize = 0, len(data)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, csize, size, len(name), 0)
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII",
        0x02014B50,
        20,
        20,
        0,
        8,
        0,
        0,
        crc,
        csize,
        size,
        len(name),
        0,
        0,
        0,
        0,
        0,
        0,
    )
    cd_offset = len(local) + len(name) + csize
    cd = central + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(cd), cd_offset, 0)
    path.write_bytes(local + name + data + cd + end)
