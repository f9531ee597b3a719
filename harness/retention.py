"""Golden retention: which producers the store keeps, ordered by torch release, not write date.

The policy is data (``harness/data/retention.toml``, explained in docs/retention.md):

- a producer is kept while its torch minor (2.6, 2.13, ...) is among the newest
  ``keep.torch_minors`` minors that have a producer in the store;
- once ``torch_minors`` newer minors are in the store, its minor has left the window; it is
  kept ``keep.days`` more days, counted from the day the store first held that many newer
  minors (the first golden date of the minor that completed the count), then it is expired.

Dates only start the grace period; the order is the release order. So a producer written late
for an old release (a backfill) takes its release's place: it never pushes a newer release out
of the window, and a backfill of a minor already outside the window is as old as its release
(its grace may be over the day it is written).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.manifest import Manifest, parse_producer
from harness.store import iter_goldens

try:
    import tomllib
except ModuleNotFoundError:  # python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_RETENTION = Path(__file__).parent / "data" / "retention.toml"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Retention:
    torch_minors: int
    days: int
    subjects: tuple[str, ...]
    torch: str  # the release qbc pins: its producer of the current qbc version is required

    @classmethod
    def load(cls, path: Path | None = None) -> Retention:
        with open(path or DEFAULT_RETENTION, "rb") as f:
            data: dict[str, Any] = tomllib.load(f)
        return cls(
            torch_minors=int(data["keep"]["torch_minors"]),
            days=int(data["keep"]["days"]),
            subjects=tuple(data.get("release", {}).get("subjects", ())),
            torch=str(data["release"]["torch"]),
        )


def golden_date(manifest: Manifest) -> dt.datetime:
    """A golden's UTC write date (the manifest's ``date``)."""
    return dt.datetime.strptime(manifest.date, DATE_FORMAT).replace(tzinfo=dt.timezone.utc)


def minor(producer: str) -> tuple[int, ...]:
    """The torch minor release of a producer id: ``torch-2.8.0_qbc-0.1.0`` -> (2, 8)."""
    return parse_producer(producer)[0][:2]


def first_dates(store: Path) -> dict[tuple[int, ...], dt.datetime]:
    """Per torch minor in the store: the date of its oldest golden (when the minor arrived)."""
    first: dict[tuple[int, ...], dt.datetime] = {}
    for g in iter_goldens(store):
        if g.manifest is None:  # an unusable manifest fails its own check; it has no date
            continue
        d, m = golden_date(g.manifest), minor(g.producer)
        first[m] = min(first.get(m, d), d)
    return first


def out_of_window_since(store: Path, keep_minors: int) -> dict[str, dt.datetime | None]:
    """Per producer: when its minor left the window of the newest ``keep_minors`` minors
    (None while it is inside). That is the date the ``keep_minors``-th newer minor arrived."""
    first = first_dates(store)
    out: dict[str, dt.datetime | None] = {}
    for g in iter_goldens(store):
        mine = minor(g.producer)
        arrivals = sorted(d for m, d in first.items() if m > mine)
        out[g.producer] = arrivals[keep_minors - 1] if len(arrivals) >= keep_minors else None
    return out


def expired(store: Path, policy: Retention, now: dt.datetime) -> list[str]:
    """Producers the policy no longer keeps at ``now``, sorted."""
    grace = dt.timedelta(days=policy.days)
    return sorted(
        p
        for p, since in out_of_window_since(store, policy.torch_minors).items()
        if since is not None and now - since > grace
    )
