"""Integrity of the golden store: nothing from a golden is loaded before it is proven intact.

Goldens come from other torch versions, other machines and other people, so the runner treats
every byte of the store as hostile until checked. This module holds those checks; the store and
the runner call them (``harness.store.iter_goldens`` / ``Golden.path``, ``harness.verify``).

Manifest (``golden/<subject>/<producer>/<engine>/<case>/manifest.json``):

- at most :data:`MAX_MANIFEST_BYTES`, a regular file reached without symlinks, valid JSON;
- ``schema`` is an int this qbc reads (:data:`harness.manifest.READABLE_SCHEMAS`); a larger
  one means the golden was written by a newer qbc ("upgrade qbc", naming the file and both
  versions);
- ``subject`` / ``engine`` / ``case`` / ``producer.id`` agree with the folder the manifest lies
  in (a manifest moved or swapped between goldens is caught here);
- ``files`` maps each format to ``{"path", "sha256", "size"}``: a relative path without ``..``,
  64 lowercase hex digits, an int in [0, :data:`MAX_FILE_BYTES`];
- schema 2's ``isa`` block: ``class`` an ISA class (harness.isa.CLASSES); ``classes`` maps
  classes, its own among them, to entries of formats ``files`` has, each checked like those of
  ``files``; ``unreachable`` maps classes to reasons.

A problem with the manifest does not stop the run: the golden gets ``Golden.problem`` and one
check named ``manifest`` that fails with the message (harness.verify.MANIFEST_CHECK).

File (:func:`verified_file`, before any load): a regular file (no symlink anywhere below the
store root, no FIFO or device), inside its producer folder, of the recorded size (compared
before hashing, so a huge file is never read), with the recorded sha256; if it is a zip archive
(torch.save, TorchScript, torch.export and torch.package files are), its central directory is
inspected (:func:`inspect_zip`) so an archive that would decompress to gigabytes, hold more than
:data:`MAX_ZIP_ENTRIES` entries or name paths outside itself is refused without being opened by
a loader.

Every limit can be raised through the environment (``QBC_MAX_FILE_BYTES``,
``QBC_MAX_UNPACKED_BYTES``) for stores that legitimately hold bigger models.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from harness import jsonstrict, names
from harness.isa import CLASSES
from harness.manifest import READABLE_SCHEMAS, SCHEMA_VERSION, Manifest
from harness.outcomes import IntegrityError, ManifestProblem

MAX_MANIFEST_BYTES = 4 << 20
MAX_FILE_BYTES = int(os.environ.get("QBC_MAX_FILE_BYTES", 256 << 20))
MAX_UNPACKED_BYTES = int(os.environ.get("QBC_MAX_UNPACKED_BYTES", 512 << 20))
MAX_ZIP_ENTRIES = 10_000
# Deflate cannot compress better than ~1032:1; a legitimate archive of tensors and TorchScript
# code stays far below. An entry claiming more than this ratio (plus slack for tiny entries) is a
# forged header or a bomb.
MAX_DEFLATE_RATIO = 1032
_RATIO_SLACK = 64 << 10
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ZIP_MAGIC = b"PK\x03\x04"


# --------------------------------------------------------------------------------------------
# paths


def _no_symlinks(root: Path, path: Path) -> None:
    """Raise ManifestProblem/OSError-free ValueError if any component of ``path`` below ``root``
    is a symlink (the store root itself may be one, e.g. a checkout on another disk)."""
    rel = path.relative_to(root)
    cur = root
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink():
            raise ValueError(
                f"{cur} is a symlink (to {os.readlink(cur)}); golden files must be regular "
                "files inside the store"
            )


def _safe_relpath(rel: Any) -> PurePosixPath:
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        raise ValueError(f"path {rel!r} is not a relative POSIX path")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or rel != str(p):
        raise ValueError(f"path {rel!r} must stay inside the producer folder (no '/', '..')")
    return p


# --------------------------------------------------------------------------------------------
# manifest


def load_manifest(path: Path, store: Path, expect: dict[str, str] | None = None) -> Manifest:
    """The manifest at ``path`` after every check in the module docstring, typed; else
    ManifestProblem.

    ``expect`` holds the ``subject``, ``producer``, ``engine`` and ``case`` the folder says
    (None: a manifest just written into a staging folder, whose place is not yet its own).
    This is the only reader of manifests.
    """
    try:
        _no_symlinks(Path(store), path)
        st = path.lstat()
    except FileNotFoundError:
        raise ManifestProblem(
            f"{path} is missing: a golden folder must hold its manifest.json"
        ) from None
    except (ValueError, OSError) as exc:
        raise ManifestProblem(f"manifest {path}: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ManifestProblem(f"manifest {path} is not a regular file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise ManifestProblem(
            f"manifest {path} is {st.st_size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit"
        )
    try:
        # duplicate keys refused: a reviewer reads the first, json.loads would keep the last
        data = jsonstrict.loads(path.read_bytes())
    except jsonstrict.JSONProblem as exc:
        raise ManifestProblem(f"manifest {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestProblem(f"manifest {path} is a JSON {type(data).__name__}, not an object")

    schema = data.get("schema")
    if type(schema) is not int:  # bool is an int subclass: refuse it too
        raise ManifestProblem(
            f"manifest {path}: golden schema {schema!r} is not a schema version "
            f"(this qbc reads schema {SCHEMA_VERSION})"
        )
    if schema > SCHEMA_VERSION:
        raise ManifestProblem(
            f"manifest {path} has golden schema {schema}, newer than this qbc understands "
            f"(it reads schema {SCHEMA_VERSION}): upgrade qbc to verify this golden"
        )
    if schema not in READABLE_SCHEMAS:
        raise ManifestProblem(
            f"manifest {path} has golden schema {schema}; this qbc reads schemas "
            f"{', '.join(map(str, READABLE_SCHEMAS))} and has no reader for it"
        )

    for key in ("subject", "engine", "case") if expect else ():
        if data.get(key) != expect[key]:
            raise ManifestProblem(
                f"manifest {path} says {key} {data.get(key)!r} but lies in the folder of "
                f"{key} {expect[key]!r} (moved or swapped between goldens?)"
            )
    producer = data.get("producer")
    pid = producer.get("id") if isinstance(producer, dict) else None
    if expect and pid != expect["producer"]:
        raise ManifestProblem(
            f"manifest {path} says producer {pid!r} but lies in producer folder "
            f"{expect['producer']!r}"
        )

    files = data.get("files")
    if not isinstance(files, dict) or not files:
        raise ManifestProblem(f"manifest {path}: 'files' must be a non-empty object")
    for fmt, entry in files.items():
        try:
            names.check("format", fmt)
            _check_entry(entry)
        except ValueError as exc:
            raise ManifestProblem(f"manifest {path}: file entry {fmt!r}: {exc}") from None
    if schema >= 2:
        try:
            _check_isa_block(data.get("isa"), files)
        except ValueError as exc:
            raise ManifestProblem(f"manifest {path}: 'isa': {exc}") from None
    try:
        return Manifest.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestProblem(f"manifest {path}: {type(exc).__name__}: {exc}") from None


def _check_isa_block(block: Any, files: dict[str, Any]) -> None:
    if not isinstance(block, dict):
        raise ValueError(f"is a {type(block).__name__}, not an object")
    own = block.get("class")
    if own not in CLASSES:
        raise ValueError(f"class {own!r} is not an ISA class ({', '.join(CLASSES)})")
    classes = block.get("classes")
    if not isinstance(classes, dict) or own not in classes:
        raise ValueError(f"'classes' must be an object that holds the golden's own class {own!r}")
    for cls, entries in classes.items():
        if cls not in CLASSES:
            raise ValueError(f"classes: {cls!r} is not an ISA class ({', '.join(CLASSES)})")
        if not isinstance(entries, dict) or (cls == own and entries):
            raise ValueError(
                f"classes[{cls!r}] must be an object of file entries (empty for the own class)"
            )
        for fmt, entry in entries.items():
            if fmt not in files:
                raise ValueError(f"classes[{cls!r}] names format {fmt!r}, which 'files' lacks")
            try:
                _check_entry(entry)
            except ValueError as exc:
                raise ValueError(f"classes[{cls!r}] file entry {fmt!r}: {exc}") from None
    unreachable = block.get("unreachable", {})
    if not isinstance(unreachable, dict) or not all(
        c in CLASSES and isinstance(r, str) for c, r in unreachable.items()
    ):
        raise ValueError("'unreachable' must map ISA classes to reasons")


def _check_entry(entry: Any) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"is a {type(entry).__name__}, not an object")
    _safe_relpath(entry.get("path"))
    digest = entry.get("sha256")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise ValueError(f"sha256 {digest!r} is not 64 lowercase hex digits")
    size = entry.get("size")
    if type(size) is not int or size < 0:
        raise ValueError(f"size {size!r} is not a byte count")
    if size > MAX_FILE_BYTES:
        raise ValueError(
            f"declared size {size} bytes is over the {MAX_FILE_BYTES}-byte limit "
            "(raise QBC_MAX_FILE_BYTES if this store really holds such files)"
        )


# --------------------------------------------------------------------------------------------
# files


def _sha256_regular(path: Path, size: int) -> str:
    h = hashlib.sha256()
    # O_NOFOLLOW | O_NONBLOCK: even if the file were swapped for a symlink or FIFO after lstat,
    # opening it neither follows the link nor blocks.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        remaining = size
        while remaining > 0:
            chunk = f.read(min(1 << 20, remaining))
            if not chunk:
                break
            h.update(chunk)
            remaining -= len(chunk)
    return h.hexdigest()


def verified_file(store: Path, producer_dir: Path, entry: Any, label: str) -> Path:
    """The file a manifest ``entry`` names, once it is proven intact (module docstring); else
    :class:`IntegrityError` starting with ``label`` (e.g. "golden <id>: expected file") and
    naming the file, and the expected and actual hash (or what else is wrong)."""

    def fail(msg: str) -> IntegrityError:
        return IntegrityError(f"{label} {msg}")

    if hasattr(entry, "to_json"):  # a typed manifest.FileEntry
        entry = entry.to_json()
    try:
        _check_entry(entry)
        rel = _safe_relpath(entry["path"])
    except ValueError as exc:
        raise fail(f"entry is unusable: {exc}") from None
    path = producer_dir / rel
    try:
        _no_symlinks(store, path)
        st = path.lstat()
    except FileNotFoundError:
        raise fail(f"{path} is missing (manifest records sha256 {entry['sha256']})") from None
    except (ValueError, OSError) as exc:
        raise fail(f"{path}: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise fail(f"{path} is not a regular file (mode {stat.filemode(st.st_mode)})")
    if st.st_nlink > 1:
        # a hard link could make a golden's file another file of the machine (whose content
        # a failure diff would then print); a checkout never creates them
        raise fail(f"{path} has {st.st_nlink} hard links; golden files must be plain files")
    if st.st_size > MAX_FILE_BYTES:
        raise fail(
            f"{path} is {st.st_size} bytes, over the {MAX_FILE_BYTES}-byte limit; not hashed "
            f"(manifest records sha256 {entry['sha256']}, size {entry['size']})"
        )
    digest = _sha256_regular(path, st.st_size)
    if st.st_size != entry["size"] or digest != entry["sha256"]:
        raise fail(
            f"{path} does not match its manifest: expected sha256 {entry['sha256']} "
            f"(size {entry['size']}), actual sha256 {digest} (size {st.st_size})"
        )
    try:
        inspect_zip(path)
    except ValueError as exc:
        raise fail(f"{path} is refused before loading: {exc}") from None
    return path


def inspect_zip(path: Path) -> None:
    """Refuse (ValueError) a zip archive a loader should not open: see the module docstring.

    Files that are not zip archives pass. torch.load only treats files starting with the local
    header magic as archives; TorchScript's reader finds the central directory at the end, so
    both signatures are looked for.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    starts_as_zip = head == _ZIP_MAGIC
    if not starts_as_zip and not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        if starts_as_zip:
            raise ValueError(f"corrupt zip archive ({exc})") from None
        return  # e.g. a legacy pickle whose tensor bytes happen to contain "PK\x05\x06"
    if len(infos) > MAX_ZIP_ENTRIES:
        raise ValueError(f"zip archive has {len(infos)} entries (limit {MAX_ZIP_ENTRIES})")
    file_size = path.stat().st_size
    total = 0
    for info in infos:
        name = info.filename
        if name.startswith("/") or ".." in PurePosixPath(name).parts or "\x00" in name:
            raise ValueError(f"zip entry {name!r} names a path outside the archive")
        if info.compress_size > file_size:
            raise ValueError(
                f"zip entry {name!r} claims {info.compress_size} compressed bytes in a "
                f"{file_size}-byte file"
            )
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise ValueError(
                    f"stored zip entry {name!r} claims {info.file_size} bytes but holds "
                    f"{info.compress_size}"
                )
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if info.file_size > MAX_DEFLATE_RATIO * info.compress_size + _RATIO_SLACK:
                raise ValueError(
                    f"zip entry {name!r} would inflate {info.compress_size} bytes to "
                    f"{info.file_size} (ratio over {MAX_DEFLATE_RATIO}: a zip bomb)"
                )
        else:
            raise ValueError(
                f"zip entry {name!r} uses compression method {info.compress_type}, which torch "
                "never writes"
            )
        total += info.file_size
        if total > MAX_UNPACKED_BYTES:
            raise ValueError(
                f"zip archive would decompress to more than {MAX_UNPACKED_BYTES} bytes "
                f"(entry {name!r} declares {info.file_size}); raise QBC_MAX_UNPACKED_BYTES "
                "if this is a real model"
            )
