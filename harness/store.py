"""The golden store: ``golden/<subject>/<producer>/<engine>/<case>/manifest.json``.

Binary artifacts live once per producer in ``golden/<subject>/<producer>/blobs/<sha256[:16]>.<ext>``
(content-addressed: identical files, e.g. the same seeded input on four engines, are stored
once); text artifacts (manifest, graph signature) stay inside the golden's folder so a review
diff shows them. Every manifest entry records path, sha256 and size; :meth:`Golden.path` checks
both before anything is loaded.

A producer's folder is only ever written whole, by that producer, in a staging folder outside the
store and then swapped in with one atomic exchange (:func:`replace_producer`, harness.atomic), so
an interrupted write leaves the store as it was.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import atomic, integrity
from harness.manifest import sha256_file
from harness.outcomes import ManifestProblem

MANIFEST = "manifest.json"
BLOBS = "blobs"
TEXT_SUFFIXES = (".txt", ".json")


@dataclass
class Golden:
    store: Path
    subject: str
    producer: str
    engine: str
    case: str
    manifest: dict[str, Any] = field(repr=False)
    #: why the manifest is unusable (harness.integrity); then ``manifest`` has no files and the
    #: runner reports the golden as one failing ``manifest`` check
    problem: str | None = None

    @property
    def producer_dir(self) -> Path:
        return self.store / self.subject / self.producer

    @property
    def dir(self) -> Path:
        return self.producer_dir / self.engine / self.case

    @property
    def id(self) -> str:
        return f"{self.subject}/{self.producer}/{self.engine}/{self.case}"

    @property
    def formats(self) -> list[str]:
        return list(self.manifest["files"])

    def path(self, fmt: str) -> Path:
        """The file of ``fmt`` after checking its size and sha256 against the manifest (and that
        it is a regular file inside the store, and not a zip bomb): harness.integrity; else
        :class:`harness.outcomes.IntegrityError`."""
        entry = self.manifest["files"].get(fmt)
        if entry is None:
            raise KeyError(f"golden {self.id} has no {fmt!r} file")
        return integrity.verified_file(
            self.store, self.producer_dir, entry, f"golden {self.id}: {fmt} file"
        )


def iter_goldens(store: Path) -> list[Golden]:
    """Every golden in the store, whatever produced it, sorted by id."""
    store = Path(store)
    out = []
    # Every folder at golden depth is a golden, with or without a usable manifest: a broken one
    # becomes that golden's failure (harness.integrity), never a crash of the whole run.
    for case_dir in sorted(p for p in store.glob("*/*/*/*") if p.is_dir()):
        engine_dir, producer_dir = case_dir.parent, case_dir.parent.parent
        if producer_dir.name.startswith(".") or engine_dir.name == BLOBS:
            continue
        ids = {
            "subject": producer_dir.parent.name,
            "producer": producer_dir.name,
            "engine": engine_dir.name,
            "case": case_dir.name,
        }
        try:
            manifest = integrity.load_manifest(case_dir / MANIFEST, store, ids)
            problem = None
        except ManifestProblem as exc:
            manifest, problem = {"files": {}}, str(exc)
        out.append(Golden(store=store, **ids, manifest=manifest, problem=problem))
    return out


def add_file(producer_tmp: Path, golden_rel: str, src: Path) -> dict[str, Any]:
    """Move a freshly written ``src`` into the producer being built; returns its manifest entry.

    Text files go into the golden folder under their own name; binaries go to ``blobs/`` named by
    content (an identical blob already there is reused, not stored twice).
    """
    digest, size = sha256_file(src), src.stat().st_size
    if src.suffix in TEXT_SUFFIXES:
        rel = f"{golden_rel}/{src.name}"
    else:
        rel = f"{BLOBS}/{digest[:16]}{''.join(src.suffixes)}"
    dest = producer_tmp / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and sha256_file(dest) == digest:
        src.unlink()
    else:
        shutil.move(str(src), dest)
    atomic.write_step(f"add {rel}")
    return {"path": rel, "sha256": digest, "size": size}


def start_producer(store: Path, subject: str, producer: str, keep_existing: bool) -> Path:
    """A staging folder outside the store to build ``producer``'s new content in (a copy of the
    current content when ``keep_existing``, for partial regeneration): harness.atomic."""
    tmp = atomic.new_staging_dir(store, subject, producer)
    final = Path(store) / subject / producer
    if keep_existing and final.exists():
        shutil.copytree(final, tmp)
    else:
        tmp.mkdir()
    atomic.write_step(f"staged {subject}/{producer}")
    return tmp


def collect_garbage(producer_tmp: Path) -> None:
    """Delete blobs no manifest references any more."""
    used: set[str] = set()
    for manifest in producer_tmp.glob(f"*/*/{MANIFEST}"):
        data = integrity.load_manifest(manifest, producer_tmp)
        used.update(e["path"] for e in data["files"].values())
    blobs = producer_tmp / BLOBS
    if blobs.is_dir():
        for blob in blobs.iterdir():
            if f"{BLOBS}/{blob.name}" not in used:
                blob.unlink()
    atomic.write_step("collected garbage")


def replace_producer(tmp: Path, producer: str) -> Path:
    """Atomically put staged ``tmp`` in place as the producer's folder (one exchange, then drop
    the old content): harness.atomic."""
    final = atomic.live_dir(tmp)
    assert final.name == producer, (final, producer)
    return atomic.swap_in(tmp, final)


def producer_size(store: Path, subject: str, producer: str) -> int:
    return sum(
        p.stat().st_size for p in (Path(store) / subject / producer).rglob("*") if p.is_file()
    )
