"""Warnings raised while a golden loads or runs: recorded per check, never judged.

A golden check's verdict comes from numbers and graphs. Whatever the Python warning filters of
the process say (a project's ``filterwarnings = error``, ``-W error``, an editable install run
from the checkout or a wheel run from elsewhere), a warning raised inside :func:`recording` is
caught, never raised, and comes back as a :class:`Recorded`: category, first line of the
message, and which package issued it (``torch``, ``qbc``, ...) at which line. The runner puts
them in the check's results row and the report counts them per consumer.

Warnings raised in another process (an isolated load) or earlier in the same process (a build
cached for several checks) are handed back as plain data and :func:`replay`-ed into the
recording of the check they belong to, so each check records the same warnings whichever
process or order ran it. (Warnings a C++ ``TORCH_WARN_ONCE`` emits only once per process are
the exception: only the first check of a process sees them.)

A leaf module: it imports nothing from harness.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

#: longest message kept (first line only): enough to tell two warnings apart in a report
MESSAGE_CHARS = 160
_HARNESS_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True, order=True)
class Recorded:
    # the package of the line the warning points at ("torch", "qbc", "python", ...): the code
    # that warned, or its caller when it warns with a stacklevel (torch's deprecations do)
    origin: str
    category: str  # "UserWarning", "FutureWarning", ...
    message: str  # first line, at most MESSAGE_CHARS characters
    location: str  # "torch/export/pt2_archive/_package.py:123"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recorded:
        return cls(**{k: str(data[k]) for k in ("origin", "category", "message", "location")})


def _origin_and_location(filename: str, lineno: int) -> tuple[str, str]:
    path = os.path.abspath(filename) if filename else "?"
    if path.startswith(_HARNESS_DIR + os.sep):
        rel = "harness/" + os.path.relpath(path, _HARNESS_DIR)
        return "qbc", f"{rel}:{lineno}"
    parts = path.split(os.sep)
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            rest = parts[len(parts) - parts[::-1].index(marker) :]
            if rest:
                return rest[0].removesuffix(".py"), f"{'/'.join(rest)}:{lineno}"
    stdlib = os.path.dirname(os.__file__)
    if path.startswith(stdlib + os.sep):
        return "python", f"{os.path.relpath(path, stdlib)}:{lineno}"
    return os.path.basename(path), f"{os.path.basename(path)}:{lineno}"


def record(message: Warning | str, category: type[Warning], filename: str, lineno: int) -> Recorded:
    origin, location = _origin_and_location(filename, lineno)
    text = str(message).strip()
    first = text.splitlines()[0] if text else ""
    return Recorded(
        origin=origin,
        category=getattr(category, "__name__", str(category)),
        message=first[:MESSAGE_CHARS],
        location=location,
    )


_active: list[list[Recorded]] = []


@contextlib.contextmanager
def recording() -> Iterator[list[Recorded]]:
    """Catch every warning raised in the block into the yielded list, as they come (plus any
    :func:`replay`-ed into it). Nothing is raised or printed, whatever the filters outside."""
    records: list[Recorded] = []

    def show(message: Any, category: Any, filename: str, lineno: int, *_: Any) -> None:
        records.append(record(message, category, filename, lineno))

    _active.append(records)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            yield records
    finally:
        # by identity: two recordings' lists may be equal (both empty)
        del _active[next(i for i, r in enumerate(_active) if r is records)]


def replay(records: Iterable[Recorded]) -> None:
    """Hand warnings recorded elsewhere (another process, a cached build) to the innermost
    :func:`recording`. Outside any recording they are dropped: they belong to a check's record,
    and raising them again where they were already caught would let a process's warning filters
    (``error``) decide what a check does, which is what recording prevents."""
    if _active:
        _active[-1].extend(records)


def summarize(records: Iterable[Recorded]) -> list[dict[str, Any]]:
    """Distinct warnings of one check, sorted, each with how often it was raised: the form a
    results row stores."""
    counts = Counter(records)
    return [{**r.as_dict(), "count": n} for r, n in sorted(counts.items())]


def describe(entry: dict[str, Any]) -> str:
    """One line for a report: ``torch UserWarning: The given buffer is not writable``."""
    return f"{entry['origin']} {entry['category']}: {entry['message']}"
