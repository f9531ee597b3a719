"""What a golden file holds, read for comparison without running it: two files whose bytes
legitimately differ (a TorchScript archive's debug tables, a legacy pickle's storage keys) are
the same when their contents are (harness.regen's determinism gate, the generator's per-ISA-class
files, ``qbc diff``).
"""

from __future__ import annotations

import difflib
import hashlib
import re
import zipfile
from pathlib import Path
from typing import Any


def contents(path: Path, trusted: bool = False) -> Any:
    """What a tensor or TorchScript file holds, for comparing two of them: ``torch.load``
    (weights_only unless ``trusted``), or a TorchScript archive's entries (:func:`archive`)."""
    import torch

    if zipfile.is_zipfile(path) and any(
        n.endswith("/constants.pkl") for n in zipfile.ZipFile(path).namelist()
    ):
        return archive(path)
    try:
        return torch.load(path, weights_only=True)
    except Exception:
        if not trusted:  # full unpickling can run code: only for a case's declared trusted loads
            raise
        # Only reached for files the generator itself just wrote or the store holds and whose
        # hash matched (e.g. dynamic LSTM packed params): trusted by construction of this check.
        return torch.load(path, weights_only=False)


#: TorchScript archive entries that record where and when it was written, not what it holds:
#: debug tables (source paths, call stacks) and a per-save id
_ARCHIVE_NOISE = (".debug_pkl", ".data/serialization_id")
#: TorchScript numbers the classes it compiles per process (``___torch_mangle_28``) and files
#: the first class of a module as ``container.py``, later ones as
#: ``container/___torch_mangle_5.py``: where a class lands says how many modules were scripted
#: before it in that process, not what it is
_MANGLE = re.compile(r"[./]___torch_mangle_\d+")
#: TorchScript's printer names temporaries ``_0``, ``_1``, ... counting across the whole file,
#: so a function printed after a class in the same file (unmangled) gets other numbers than the
#: same function alone in its file (its class mangled into a file of its own)
_TEMP = re.compile(r"\b_\d+\b")
#: pickle opcodes that say how the stream is laid out, not what it holds
_PICKLE_LAYOUT = {"PROTO", "FRAME"}


def archive(path: Path) -> dict[str, str]:
    """A TorchScript archive's contents without loading it (nothing in it runs): its code as
    text, grouped by the module it defines classes of; its pickles as their opcodes; its
    tensor and packed-parameter storages by sha256. Names lose the archive's top folder (the
    file's name) and class mangling."""
    code: dict[str, list[str]] = {}
    out: dict[str, str] = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            name = info.filename.split("/", 1)[-1]
            if name.endswith(_ARCHIVE_NOISE):
                continue
            data = z.read(info)
            if name.endswith(".py"):
                text = _MANGLE.sub("", data.decode("utf-8", "replace"))
                code.setdefault(_MANGLE.sub("", name), []).extend(code_blocks(text))
            elif name.endswith(".pkl"):
                out[name] = _pickle_text(data)
            else:
                out[name] = hashlib.sha256(data).hexdigest()
    out.update({name: "".join(sorted(texts)) for name, texts in code.items()})
    return out


def code_blocks(text: str) -> list[str]:
    """A TorchScript code file as its top-level blocks (each ``def`` or ``class`` with its body,
    and whatever precedes the first), temporaries renumbered from ``_0`` in each block in the
    order they first appear. Renaming is one-to-one within a block, so two blocks are equal
    exactly when they are the same code up to the printer's file-wide numbering."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if line.startswith(("def ", "class ")) and blocks[-1]:
            blocks.append([])
        blocks[-1].append(line)
    return [_renumbered("".join(lines)) for lines in blocks if lines]


def _renumbered(block: str) -> str:
    names: dict[str, str] = {}
    return _TEMP.sub(lambda m: names.setdefault(m.group(), f"_{len(names)}"), block)


def _pickle_text(data: bytes) -> str:
    """A pickle as its opcodes and arguments, one per line (read, never executed)."""
    import pickletools

    lines = []
    for op, arg, _pos in pickletools.genops(data):
        if op.name not in _PICKLE_LAYOUT:
            lines.append(f"{op.name} {_MANGLE.sub('', repr(arg))}")
    return "\n".join(lines) + "\n"


def same_entries(a: Path, b: Path) -> bool:
    """Whether two zip archives hold the same entries, byte for byte and in the same order, so
    that only the zip's own metadata differs. torch <= 2.7 writes a ``.pt2`` with Python's
    zipfile, which stamps every entry with the time it was written: the same program saved a
    second later has other bytes (torch >= 2.8's own writer stamps no time). Nothing is read
    but the archives' entries."""
    if not (zipfile.is_zipfile(a) and zipfile.is_zipfile(b)):
        return False
    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        ia, ib = za.infolist(), zb.infolist()
        if [i.filename for i in ia] != [i.filename for i in ib]:
            return False
        if [(i.CRC, i.file_size) for i in ia] != [(i.CRC, i.file_size) for i in ib]:
            return False
        return all(za.read(x) == zb.read(y) for x, y in zip(ia, ib, strict=True))


def text_diff(a: str, b: str, name: str = "") -> list[str]:
    """A unified diff of two texts (one line of context), old ``A`` to new ``B``."""
    label = f" {name}" if name else ""
    return [
        line.rstrip("\n")
        for line in difflib.unified_diff(
            a.splitlines(True), b.splitlines(True), f"A{label}", f"B{label}", n=1
        )
    ]


def plain(value: Any) -> Any:
    """ScriptObjects (packed params) compared through their serialized state."""
    import torch

    if isinstance(value, torch.ScriptObject):
        return plain(value.__getstate__())
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(plain(v) for v in value)
    return value
