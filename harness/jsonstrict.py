"""JSON read the way a reviewer reads it.

Python's ``json`` keeps the *last* of two equal keys, while a reviewer reading a diff sees the
first: ``{"sha256": "<good>", ..., "sha256": "<bad>"}`` would pass review and load the bad one.
Golden metadata (manifests, the store index, the JSON inside ``.pt2`` archives) is therefore
parsed with :func:`loads`, which refuses duplicate keys and the non-standard ``NaN`` /
``Infinity`` literals. This module imports nothing from harness: every layer may use it.
"""

from __future__ import annotations

import json
from typing import Any


class JSONProblem(ValueError):
    """Text that is not JSON as qbc accepts it; the message names what and where."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JSONProblem(f"duplicate key {key!r} (JSON readers disagree on which one wins)")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise JSONProblem(f"non-standard literal {name} (not JSON)")


def loads(data: bytes | str) -> Any:
    """``json.loads`` refusing duplicate keys, NaN / Infinity literals, bad UTF-8 and nesting
    deep enough to exhaust the parser (JSONProblem)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except JSONProblem:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise JSONProblem(f"not valid JSON: {exc}") from None
