"""The store index: which goldens the store holds and what they contain, pinned in one file.

``golden/index.json`` is committed with the store, apart from the per-golden manifests::

    {
     "schema": 1,
     "complete": ["qbc/torch-2.13.0_qbc-0.1.0", ...],
     "goldens": {
      "<subject>/<producer>/<engine>/<case>": {"manifest": "<sha256>", "formats": [...]},
      ...
     }
    }

A manifest lists every file of its golden with its sha256, whatever the manifest's schema, so
the sha256 of the manifest's bytes pins every byte of the golden; ``formats`` is there for the
reviewer (an index diff says which formats a pull request adds or drops). ``complete`` names
the producers a full regeneration wrote: for those that are today's producer, the case catalogue
must be covered (every golden and format it expects).

:func:`problems` compares the store with its index: a golden added, removed or changed without
the index, an index that is missing or unreadable, and (for complete producers of today) a
golden or format the catalogue expects that the store lacks, each as ``(golden id, format,
message)`` for the runner to fail. The regeneration tool rebuilds the index (:func:`write`);
after any other legitimate change, ``python tools/regen_goldens.py --index`` does.

What the index promises and what it does not: docs/security.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from harness import jsonstrict
from harness.store import MANIFEST, Golden, iter_goldens

INDEX = "index.json"
SCHEMA = 1
#: the pseudo golden id of a problem with the index itself
STORE_ID = "*/*/*/*"


def path(store: Path) -> Path:
    return Path(store) / INDEX


def _entry(golden: Golden) -> dict[str, Any]:
    digest = hashlib.sha256((golden.dir / MANIFEST).read_bytes()).hexdigest()
    return {"manifest": digest, "formats": sorted(golden.formats)}


def build(store: Path, complete: set[str] | None = None) -> dict[str, Any]:
    """The index of the store as it is now; ``complete``: producers to mark complete (plus
    those already marked whose folders still exist)."""
    goldens = [g for g in iter_goldens(store) if g.problem is None]
    producers = {f"{g.subject}/{g.producer}" for g in goldens}
    old = read(store)
    keep = set(old.get("complete", [])) if isinstance(old, dict) else set()
    return {
        "schema": SCHEMA,
        "complete": sorted((keep | (complete or set())) & producers),
        "goldens": {g.id: _entry(g) for g in goldens},
    }


def write(store: Path, complete: set[str] | None = None) -> Path:
    """Rebuild ``<store>/index.json`` from the store (see :func:`build`)."""
    target = path(store)
    data = build(store, complete)
    tmp = target.with_name(f".{INDEX}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(target)
    return target


def read(store: Path) -> dict[str, Any] | str:
    """The index, or why it cannot be used (a string)."""
    p = path(store)
    if p.is_symlink() or not p.is_file():
        return f"{p} is missing (or not a regular file)"
    try:
        data = jsonstrict.loads(p.read_bytes())
    except (OSError, jsonstrict.JSONProblem) as exc:
        return f"{p} cannot be read: {exc}"
    goldens = data.get("goldens") if isinstance(data, dict) else None
    if (
        data.get("schema") != SCHEMA
        or not isinstance(goldens, dict)
        or not isinstance(data.get("complete", []), list)
        or not all(
            isinstance(e, dict) and isinstance(e.get("manifest"), str) for e in goldens.values()
        )
    ):
        return f"{p} is not a schema-{SCHEMA} store index"
    return data


def problems(store: Path, expected: dict[str, dict[str, list[str]]]) -> list[tuple[str, str, str]]:
    """``(golden id, format, message)`` for everything in the store the index does not account
    for; ``expected`` maps today's producer ``subject/producer`` to the catalogue's goldens
    ``{"<engine>/<case>": [formats]}`` (coverage is checked for those the index marks complete).
    """
    fix = "if the change is legitimate, run `python tools/regen_goldens.py --index` and commit"
    index = read(store)
    if isinstance(index, str):
        if not iter_goldens(store) and not path(store).exists():
            return []  # an empty store: nothing to account for
        return [(STORE_ID, "index", f"the store index {index}; {fix}")]
    listed: dict[str, Any] = index["goldens"]
    out: list[tuple[str, str, str]] = []
    present = {}
    for g in iter_goldens(store):
        if g.problem is None:
            present[g.id] = g
    for gid in sorted(present.keys() - listed.keys()):
        out.append(
            (gid, "index", f"golden {gid} is not in the store index (added without it); {fix}")
        )
    for gid in sorted(listed.keys() - present.keys()):
        out.append(
            (gid, "index", f"golden {gid} is in the store index but not in the store (removed "
             f"without the index); {fix}")
        )  # fmt: skip
    for gid in sorted(listed.keys() & present.keys()):
        now, then = _entry(present[gid]), listed[gid]
        if now["manifest"] != then.get("manifest"):
            gone = sorted(set(then.get("formats", [])) - set(now["formats"]))
            added = sorted(set(now["formats"]) - set(then.get("formats", [])))
            what = "".join(
                [f"; formats removed: {', '.join(gone)}" if gone else "",
                 f"; formats added: {', '.join(added)}" if added else ""]
            )  # fmt: skip
            out.append(
                (gid, "index", f"golden {gid} changed without the index: manifest sha256 "
                 f"{now['manifest']}, the index records {then.get('manifest')}{what}; {fix}")
            )  # fmt: skip
    for producer in sorted(set(index.get("complete", [])) & expected.keys()):
        for rel, formats in sorted(expected[producer].items()):
            gid = f"{producer}/{rel}"
            if gid not in present:
                out.append(
                    (gid, "index", f"golden {gid} is expected by the case catalogue of today's "
                     "producer but missing from the store")
                )  # fmt: skip
                continue
            for fmt in sorted(set(formats) - set(present[gid].formats)):
                out.append(
                    (gid, fmt, f"format {fmt} of golden {gid} is expected by the case catalogue "
                     "but missing from its manifest")
                )  # fmt: skip
    return out
