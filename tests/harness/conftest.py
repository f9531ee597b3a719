"""Fixtures for the harness tests: the committed store, copies of it, and one-byte edits."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest

from harness import index

REPO = Path(__file__).resolve().parents[2]
STORE = REPO / "golden"
PRODUCER_ID = "torch-2.13.0_qbc-0.1.0"


@pytest.fixture
def store_copy(tmp_path: Path) -> Path:
    """A private copy of the committed torch_ao goldens (edits never touch the real store)."""
    dest = tmp_path / "golden"
    shutil.copytree(STORE / "torch_ao", dest / "torch_ao")
    index.write(dest)  # the copy is accounted for, as a committed store is
    return dest


def golden_dir(store: Path, engine: str, case: str, subject: str = "torch_ao") -> Path:
    return store / subject / PRODUCER_ID / engine / case


def manifest(store: Path, engine: str, case: str) -> dict:
    return json.loads((golden_dir(store, engine, case) / "manifest.json").read_text())


def tensor_data_offset(path: Path, record_suffix: str = "data/0") -> int:
    """Byte offset of the first tensor storage inside a torch.save zip archive."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(record_suffix))
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
    )
    return info.header_offset + 30 + name_len + extra_len


def add_to_byte(path: Path, offset: int, delta: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] = (raw[offset] + delta) % 256
    path.write_bytes(bytes(raw))


KEEP = {("fbgemm", "per_tensor_observer"), ("qnnpack", "linear")}


@pytest.fixture
def small_store(tmp_path: Path) -> Path:
    """The committed producer folder with only the goldens in KEEP (blobs kept as they are)."""
    dest = tmp_path / "golden" / "torch_ao" / PRODUCER_ID
    shutil.copytree(STORE / "torch_ao" / PRODUCER_ID, dest)
    for case_dir in dest.glob("*/*"):
        if case_dir.parent.name != "blobs" and (case_dir.parent.name, case_dir.name) not in KEEP:
            shutil.rmtree(case_dir)
    index.write(tmp_path / "golden")  # the copy is accounted for, as a committed store is
    return tmp_path / "golden"
