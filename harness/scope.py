"""Producer scope: which producers' goldens a run checks.

The store keeps a producer per torch release and qbc version (nine torch minors, and every qbc
release written on them: docs/retention.md), and each producer adds about a thousand golden
checks. ``qbc verify``, the main job and CI's verify step, checks every producer. A developer's
test run needs fewer to catch what a change breaks, because the change is to today's code and
today's torch, the same for every producer: what differs between producers is the artifacts'
layout (which torch wrote them) and which version of the code wrote them. So qbc's own test
command checks a *span* of the store (``qbc_producers = "span"`` in pyproject.toml; docs/DESIGN.md),
and ``pytest --qbc-producers all`` checks everything.

Scopes, per subject, over producers in release order (torch release, then qbc version, then a
plug-in subject's version, all compared as numbers, so 2.6 comes before 2.13):

- ``all``: every producer;
- ``span``: today's producer (the one this checkout writes, ``manifest.producer_id``), the
  oldest and the newest past producer, and the newest producer of each version of the code
  under test (qbc's version, with a plug-in subject's own): both ends of the torch range and every
  version of the code that wrote goldens. A producer added inside the range changes nothing; one
  beyond either end replaces that end, one of a new code version joins;
- ``current``: today's producer only (nothing while the store holds no goldens of it).

Downstream consumers (harness.downstream) are scoped the same way, apart: CI lowers today's
producer's exported goldens only (``qbc verify --downstream-producers current``).
"""

from __future__ import annotations

from collections.abc import Iterable

# harness.manifest and harness.subjects are imported where used: the pytest plugin imports this
# module for SCOPES in every pytest run, most of which check no golden.

SCOPES = ("all", "span", "current")
#: the scope of a run that names none: a project's CI gate and ``qbc verify`` check everything
DEFAULT = "all"


def _numbers(version: str | None) -> tuple[int, ...]:
    return tuple(int(p) for p in (version or "").split(".") if p.isascii() and p.isdigit())


def release_order(producer: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], str]:
    """Sort key: torch release, qbc version, plug-in subject version (numerically), then the id."""
    from harness.manifest import producer_parts

    parts = producer_parts(producer)
    return parts.torch, _numbers(parts.qbc), _numbers(parts.subject_version), producer


def _code_version(producer: str) -> tuple[str, str | None]:
    from harness.manifest import producer_parts

    parts = producer_parts(producer)
    return parts.qbc, parts.subject_version


def select(producers: Iterable[str], today: str | None, scope: str) -> frozenset[str]:
    """The producers of one subject that ``scope`` keeps; ``today``: this checkout's producer of
    that subject (None for a subject that is not installed here)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown producer scope {scope!r} (known: {', '.join(SCOPES)})")
    every = sorted(set(producers), key=release_order)
    if scope == "all":
        return frozenset(every)
    kept = {p for p in every if p == today}
    past = [p for p in every if p != today]
    if scope == "current" or not past:
        return frozenset(kept)
    # today's producer is the newest of today's code version unless a newer torch release
    # wrote goldens with it too
    newest_of_version = {_code_version(p): p for p in every}  # ascending: the newest wins
    return frozenset(kept | {past[0], past[-1]} | set(newest_of_version.values()))


def todays_producer(subject: str) -> str | None:
    """The producer this checkout writes for ``subject`` (None: the subject is not installed)."""
    from harness.manifest import producer_id
    from harness.subjects import subject_names

    return producer_id(subject=subject) if subject in subject_names() else None


def in_scope(goldens: Iterable[tuple[str, str]], scope: str) -> frozenset[tuple[str, str]]:
    """The (subject, producer) pairs among ``goldens``' that ``scope`` keeps."""
    by_subject: dict[str, set[str]] = {}
    for subject, producer in goldens:
        by_subject.setdefault(subject, set()).add(producer)
    if scope == "all":  # no subject lookup (nor a plug-in's version) needed
        return frozenset((s, p) for s, ps in by_subject.items() for p in ps)
    return frozenset(
        (subject, p)
        for subject, producers in by_subject.items()
        for p in select(producers, todays_producer(subject), scope)
    )
