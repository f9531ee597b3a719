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

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from harness import atomic, integrity, names
from harness.manifest import FileEntry, Manifest, sha256_file
from harness.outcomes import ManifestProblem

MANIFEST = "manifest.json"
BLOBS = "blobs"
TEXT_SUFFIXES = (".txt", ".json")
_LEVELS = ("subject", "producer", "engine", "case")


@dataclass
class Golden:
    store: Path
    subject: str
    producer: str
    engine: str
    case: str
    #: None when the manifest is unusable (then :attr:`problem` says why)
    manifest: Manifest | None = field(repr=False)
    #: why the manifest is unusable (harness.integrity); the runner then reports the golden as
    #: one failing ``manifest`` check
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
        return self.manifest.formats if self.manifest else []

    def entry(self, fmt: str, isa_class: str | None = None) -> FileEntry:
        """The manifest entry of ``fmt`` in ISA class ``isa_class`` (default: the producer's)."""
        if self.manifest is None:
            raise KeyError(f"golden {self.id} has no usable manifest")
        entry = self.manifest.files_for(isa_class).get(fmt)
        if entry is None:
            raise KeyError(f"golden {self.id} has no {fmt!r} file")
        return entry

    def path(self, fmt: str, isa_class: str | None = None) -> Path:
        """The file of ``fmt`` (in ISA class ``isa_class``; default: the producer's own) after
        checking its size and sha256 against the manifest (and that it is a regular file inside
        the store, and not a zip bomb): harness.integrity; else
        :class:`harness.outcomes.IntegrityError`."""
        entry = self.entry(fmt, isa_class)
        label = f"golden {self.id}: {fmt} file" + (
            f" (ISA class {isa_class})"
            if isa_class and isa_class != self.manifest.isa_class
            else ""
        )
        return integrity.verified_file(self.store, self.producer_dir, entry, label)


def golden_at(store: Path, subject: str, producer: str, engine: str, case: str) -> Golden:
    """The golden in folder ``<store>/<subject>/<producer>/<engine>/<case>`` (its manifest
    checked by harness.integrity; an unusable one gives a Golden with :attr:`Golden.problem`)."""
    store = Path(store)
    ids = {"subject": subject, "producer": producer, "engine": engine, "case": case}
    names.check_producer(producer)  # names reach paths: the grammar first (harness.names)
    for level in ("subject", "engine", "case"):
        names.check(level, ids[level])
    try:
        manifest = integrity.load_manifest(
            store / subject / producer / engine / case / MANIFEST, store, ids
        )
        problem = None
    except ManifestProblem as exc:
        manifest, problem = None, str(exc)
    return Golden(store=store, **ids, manifest=manifest, problem=problem)


def iter_goldens(store: Path) -> list[Golden]:
    """Every golden in the store, whatever produced it, sorted by id.

    The walk never follows a symlink and checks every name against :mod:`harness.names`
    before using it: a symlink at any level, or a folder whose name is outside the grammar, is
    a golden with a ``problem`` (one failing ``manifest`` check naming the path), never an
    exception and never a walk into what the link points at. Missing levels of such a golden's
    id read ``*``.
    """
    store = Path(store)
    out = []
    # Every folder at golden depth is a golden, with or without a usable manifest: a broken one
    # becomes that golden's failure (harness.integrity), never a crash of the whole run.
    for parts, path, problem in _walk(store):
        ids = dict(zip(_LEVELS, (parts + ["*"] * 4)[:4], strict=True))
        if problem is None:
            try:
                manifest = integrity.load_manifest(path / MANIFEST, store, ids)
            except ManifestProblem as exc:
                problem = str(exc)
        if problem is not None:
            manifest = None
        out.append(Golden(store=store, **ids, manifest=manifest, problem=problem))
    return sorted(out, key=lambda g: g.id)


def _walk(store: Path) -> list[tuple[list[str], Path, str | None]]:
    """(names, path, problem) of every golden folder below ``store``, not following symlinks:
    problem None for a regular golden, else why the entry at ``path`` is one failing golden."""
    found: list[tuple[list[str], Path, str | None]] = []

    def visit(folder: Path, parts: list[str]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            found.append((parts, folder, f"{folder} cannot be listed: {exc}"))
            return
        depth = len(parts)
        for entry in entries:
            name = entry.name
            if depth == 1 and name.startswith("."):  # a producer being staged elsewhere
                continue
            if depth == 2 and name == BLOBS:
                continue
            path = Path(entry.path)
            label = [*parts, _printable(name)]
            if entry.is_symlink():
                target = _printable(os.readlink(path))
                found.append(
                    (
                        label,
                        path,
                        f"{path} is a symlink (to {target}); the golden store is walked "
                        "without following links, and golden folders must be real folders",
                    )
                )
                continue
            if not entry.is_dir(follow_symlinks=False):
                continue  # files beside the goldens (the store index, a README) are not goldens
            try:
                if depth == 1:
                    names.check_producer(name)
                else:
                    names.check(_LEVELS[depth], name)
            except names.BadName as exc:
                found.append((label, path, f"{path}: {exc}"))
                continue
            if depth == 3:
                found.append((label, path, None))
            else:
                visit(path, label)

    if store.is_dir():
        visit(store, [])
    return found


def _printable(name: str) -> str:
    """``name`` with control and non-ASCII characters escaped, for ids and messages."""
    return (
        name
        if name.isascii() and name.isprintable()
        else name.encode("unicode_escape", "backslashreplace").decode("ascii")
    )


def add_file(
    producer_tmp: Path,
    golden_rel: str,
    src: Path,
    deterministic: bool = True,
    runs_code_on_load: bool = False,
) -> FileEntry:
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
    return FileEntry(rel, digest, size, deterministic, runs_code_on_load)


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
        used.update(e.path for e in data.files.values())
        used.update(e.path for entries in data.class_files.values() for e in entries.values())
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
