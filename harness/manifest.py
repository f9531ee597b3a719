"""Producer identity, machine description and the per-golden manifest (schema below).

manifest.json (schema 2), one per golden ``golden/<subject>/<producer>/<engine>/<case>/``::

    {
      "schema": 2,
      "subject": "torch_ao", "case": "linear", "engine": "fbgemm",
      "producer": {"id": "torch-2.13.0_qbc-0.1.0", "torch": "2.13.0+cpu", "qbc": "0.1.0",
                   "python": "3.11.7"},   # a plug-in subject's also has "subject_version"
      "machine": {"platform": "Linux-...", "machine": "x86_64",
                  "isa": {"avx2": true, "avx512": true, "avx512_vnni": true, "amx": false}},
      "date": "2026-11-23T10:00:00Z",
      "seed": 0,
      "command": "tools/regen_goldens.py",
      "case_spec": {... harness.cases.Case.spec() ...},
      "files": {"<format>": {"path": "<relative to the producer folder>",
                             "sha256": "<hex>", "size": <bytes>, "deterministic": true,
                             "runs_code_on_load": false}},
      "isa": {"class": "avx512_vnni",
              "classes": {"avx512_vnni": {},
                          "avx512": {"expected": {<file entry>}},
                          "avx2": {"expected": {<file entry>}}},
              "unreachable": {"amx": "above this CPU (avx512_vnni)",
                              "base": "FBGEMM_ENABLE_INSTRUCTIONS has no setting for it"}}
    }

``files`` holds what the producer computed in its own ISA class (``isa.class``, harness.isa).
``isa.classes`` lists every class the golden holds numbers for, with the entries of the files
that came out different in that class (computed in a process capped to it); a format a class
does not list is byte-identical to ``files`` there (or, for a format that is not byte
deterministic, equal in content). ``isa.unreachable`` names the classes the producer could not
write, and why. Schema 1 (no ``isa``) is still read: its single class is derived from
``machine.isa``.

The store's only manifest reader is :func:`harness.integrity.load_manifest`; it validates the
JSON and returns the typed, frozen :class:`Manifest`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import harness
from harness import compat, isa
from harness.subjects import subject_version

SCHEMA_VERSION = 2
#: schema versions this qbc reads (1: one ISA class, derived from ``machine.isa``)
READABLE_SCHEMAS = (1, 2)
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


def cpu_isa() -> dict[str, bool]:
    """The ISA extensions of this CPU that change quantized kernels' numerics (manifest
    ``machine.isa``; the class they make is :func:`harness.isa.detect`)."""
    flags = isa.cpu_flags()
    return {
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags or "avx512vnni" in flags,
        "amx": any(f.startswith("amx") for f in flags),
    }


def class_of_isa_flags(flags: Mapping[str, Any]) -> str:
    """The ISA class a schema-1 manifest's ``machine.isa`` flags describe."""
    for cls in ("amx", "avx512_vnni", "avx512", "avx2"):
        if flags.get(cls) is True:
            return cls
    return "base"


def machine_info() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "isa": cpu_isa()}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    """One file of a golden: where it is (relative to the producer folder) and its identity."""

    path: str
    sha256: str
    size: int
    #: regenerating gives bit-identical bytes (else regen --check compares contents)
    deterministic: bool = True
    #: loading it can run code (``package``, a case's trusted loads)
    runs_code_on_load: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileEntry:
        return cls(
            path=data["path"],
            sha256=data["sha256"],
            size=data["size"],
            deterministic=bool(data.get("deterministic", True)),
            runs_code_on_load=bool(data.get("runs_code_on_load", False)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "deterministic": self.deterministic,
            "runs_code_on_load": self.runs_code_on_load,
        }


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Manifest:
    """A golden's manifest, validated (harness.integrity.load_manifest) and typed."""

    schema: int
    subject: str
    case: str
    engine: str
    #: ``{"id", "torch", "qbc", "python"}`` of the producer
    producer: Mapping[str, str]
    #: ``{"platform", "machine", "isa": {flag: bool}}`` of the machine that wrote it
    machine: Mapping[str, Any]
    date: str
    seed: int
    command: str
    case_spec: Mapping[str, Any]
    #: format -> file, as computed in :attr:`isa_class`
    files: Mapping[str, FileEntry]
    #: the ISA class ``files`` were computed in (the producer's own)
    isa_class: str
    #: every class the golden holds -> the entries that differ from ``files`` in that class
    class_files: Mapping[str, Mapping[str, FileEntry]] = field(default_factory=dict)
    #: classes the producer could not write -> why
    unreachable: Mapping[str, str] = field(default_factory=dict)

    @property
    def producer_id(self) -> str:
        return self.producer["id"]

    @property
    def formats(self) -> list[str]:
        return list(self.files)

    @property
    def classes(self) -> tuple[str, ...]:
        """The ISA classes this golden holds numbers for, lowest first."""
        return tuple(sorted({self.isa_class, *self.class_files}, key=isa.rank))

    def files_for(self, cls: str | None = None) -> Mapping[str, FileEntry]:
        """format -> file in class ``cls`` (default: the producer's own); KeyError naming the
        classes the golden holds when it has none for ``cls``."""
        if cls is None or cls == self.isa_class:
            return self.files
        if cls not in self.class_files:
            raise KeyError(
                f"the golden holds no files for ISA class {cls!r}; it holds "
                f"{', '.join(self.classes)}"
            )
        return _frozen({**self.files, **self.class_files[cls]})

    def isa_dependent(self) -> frozenset[str]:
        """Formats whose file differs in at least one of the classes the golden holds."""
        return frozenset(f for entries in self.class_files.values() for f in entries)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """The typed manifest of already validated JSON ``data`` (schema 1 or 2)."""
        files = _frozen({k: FileEntry.from_json(v) for k, v in data["files"].items()})
        block = data.get("isa")
        if block is None:  # schema 1: the class the writing machine's flags describe
            own = class_of_isa_flags((data.get("machine") or {}).get("isa") or {})
            class_files: dict[str, Mapping[str, FileEntry]] = {own: _frozen({})}
            unreachable: dict[str, str] = {}
        else:
            own = block["class"]
            class_files = {
                c: _frozen({k: FileEntry.from_json(v) for k, v in entries.items()})
                for c, entries in block["classes"].items()
            }
            unreachable = dict(block.get("unreachable", {}))
        return cls(
            schema=data["schema"],
            subject=data["subject"],
            case=data["case"],
            engine=data["engine"],
            producer=_frozen(data["producer"]),
            machine=_frozen(data.get("machine") or {}),
            date=data.get("date", ""),
            seed=data.get("seed", 0),
            command=data.get("command", ""),
            case_spec=_frozen(data.get("case_spec") or {}),
            files=files,
            isa_class=own,
            class_files=_frozen({c: v for c, v in class_files.items() if c != own}),
            unreachable=_frozen(unreachable),
        )

    def to_json(self) -> dict[str, Any]:
        """The manifest as written (always the current schema)."""
        own_and_capped = {self.isa_class: {}, **self.class_files}
        return {
            "schema": SCHEMA_VERSION,
            "subject": self.subject,
            "case": self.case,
            "engine": self.engine,
            "producer": dict(self.producer),
            "machine": {
                k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.machine.items()
            },
            "date": self.date,
            "seed": self.seed,
            "command": self.command,
            "case_spec": _plain(self.case_spec),
            "files": {k: v.to_json() for k, v in self.files.items()},
            "isa": {
                "class": self.isa_class,
                "classes": {
                    c: {k: v.to_json() for k, v in own_and_capped[c].items()}
                    for c in sorted(own_and_capped, key=isa.rank)
                },
                "unreachable": dict(self.unreachable),
            },
        }


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def new_manifest(
    subject: str,
    case_spec: dict[str, Any],
    engine: str,
    seed: int,
    command: str,
    files: Mapping[str, FileEntry],
    isa_class: str,
    class_files: Mapping[str, Mapping[str, FileEntry]] | None = None,
    unreachable: Mapping[str, str] | None = None,
) -> Manifest:
    """The manifest of a golden written now, on this machine, by this producer."""
    return Manifest(
        schema=SCHEMA_VERSION,
        subject=subject,
        case=case_spec["name"],
        engine=engine,
        producer=_frozen(producer_info(subject)),
        machine=_frozen(machine_info()),
        date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        seed=seed,
        command=command,
        case_spec=_frozen(case_spec),
        files=_frozen(files),
        isa_class=isa_class,
        class_files=_frozen(
            {c: _frozen(v) for c, v in (class_files or {}).items() if c != isa_class}
        ),
        unreachable=_frozen(unreachable or {}),
    )


def default_command() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def write_manifest(path: Path, manifest: Manifest) -> None:
    path.write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n")
