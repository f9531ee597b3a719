"""Producer identity, machine description and the per-golden manifest (schema below).

manifest.json (schema 1), one per golden ``golden/<subject>/<producer>/<engine>/<case>/``::

    {
      "schema": 1,
      "subject": "torch_ao", "case": "linear", "engine": "fbgemm",
      "producer": {"id": "torch-2.13.0_qbc-0.1.0", "torch": "2.13.0+cpu", "qbc": "0.1.0",
                   "python": "3.11.7"},   # a plug-in subject's also has "subject_version"
      "machine": {"platform": "Linux-...", "machine": "x86_64",
                  "isa": {"avx2": true, "avx512": false, "avx512_vnni": false, "amx": false}},
      "date": "2026-11-23T10:00:00Z",
      "seed": 0,
      "command": "tools/regen_goldens.py",
      "case_spec": {... harness.cases.Case.spec() ...},
      "files": {"<format>": {"path": "<relative to the producer folder>",
                             "sha256": "<hex>", "size": <bytes>, "deterministic": true,
                             "runs_code_on_load": false}}
    }
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from harness import compat
from harness.subjects import subject_version

SCHEMA_VERSION = 1
ISA_FLAGS = ("avx2", "avx512", "avx512_vnni", "amx")


def producer_id(
    torch_release: str | None = None, qbc_version: str | None = None, subject: str | None = None
) -> str:
    """The folder name of a producer in the store: ``torch-<release>_qbc-<version>`` for qbc's
    built-in subjects; a plug-in subject adds its own version,
    ``torch-<release>_qbc-<version>_<subject>-<subject version>``, so the goldens of each of
    its versions are kept side by side."""
    base = (
        f"torch-{torch_release or compat.torch_release()}_qbc-{qbc_version or harness.__version__}"
    )
    version = subject_version(subject) if subject else None
    return f"{base}_{subject}-{version}" if version else base


@dataclass(frozen=True)
class Producer:
    """A producer id taken apart."""

    torch: tuple[int, ...]
    qbc: str
    subject: str | None = None  # a plug-in subject's name, None for qbc's own subjects
    subject_version: str | None = None


_PRODUCER = re.compile(
    r"torch-(?P<torch>[^_]*)_qbc-(?P<qbc>[^_]*)(?:_(?P<subject>.+)-(?P<version>[0-9A-Za-z.+]+))?"
)


def producer_parts(pid: str) -> Producer:
    """``torch-2.13.0_qbc-0.1.0`` -> Producer((2, 13, 0), "0.1.0");
    ``torch-2.13.0_qbc-0.1.0_mylib-0.0.2`` -> Producer((2, 13, 0), "0.1.0", "mylib", "0.0.2")."""
    m = _PRODUCER.fullmatch(pid)
    if m is None:  # not a producer id qbc writes; read what can be read
        torch_part, _, qbc_part = pid.partition("_qbc-")
        return Producer(_release(torch_part.removeprefix("torch-")), qbc_part)
    return Producer(_release(m["torch"]), m["qbc"], m["subject"], m["version"])


def _release(text: str) -> tuple[int, ...]:
    # ASCII digits only: '0²'.isdigit() is True but int('0²') raises (harness.names refuses such
    # a producer folder; this parser must not be what crashes on it)
    return tuple(int(p) for p in text.split(".") if p.isascii() and p.isdigit())


def parse_producer(pid: str) -> tuple[tuple[int, ...], str]:
    """``torch-2.13.0_qbc-0.1.0`` (or with a plug-in's ``_<subject>-<version>``) ->
    ((2, 13, 0), "0.1.0")."""
    parts = producer_parts(pid)
    return parts.torch, parts.qbc


def producer_info(subject: str | None = None) -> dict[str, str]:
    """Who writes (or, as a consumer, reads) goldens: ids and versions (no torch import)."""
    info = {
        "id": producer_id(subject=subject),
        "torch": compat.torch_version_string(),
        "qbc": harness.__version__,
        "python": platform.python_version(),
    }
    version = subject_version(subject) if subject else None
    if version:
        info["subject_version"] = version
    return info


@functools.cache
def cpu_isa(cpuinfo: str = "/proc/cpuinfo") -> dict[str, bool]:
    """The ISA extensions that change quantized kernels' numerics, from /proc/cpuinfo flags."""
    flags: set[str] = set()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags or "avx512vnni" in flags,
        "amx": any(f.startswith("amx") for f in flags),
    }


def isa_string(isa: dict[str, bool] | None = None) -> str:
    """Compact ISA label used by the policy and reports: ``avx2+avx512+avx512_vnni`` or ``base``."""
    isa = cpu_isa() if isa is None else isa
    return "+".join(f for f in ISA_FLAGS if isa.get(f)) or "base"


def machine_info() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "isa": cpu_isa()}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def new_manifest(
    subject: str, case_spec: dict[str, Any], engine: str, seed: int, command: str
) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "subject": subject,
        "case": case_spec["name"],
        "engine": engine,
        "producer": producer_info(subject),
        "machine": machine_info(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seed": seed,
        "command": command,
        "case_spec": case_spec,
        "files": {},
    }


def default_command() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
