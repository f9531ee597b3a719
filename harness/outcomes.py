"""The runner's failure vocabulary: what can go wrong with a golden, as exceptions.

A leaf module (it imports nothing from harness), so every layer can raise and catch the same
types without importing the runner: integrity (``IntegrityError``, ``ManifestProblem``), the
registries (``UnknownName``), isolation, and the runner itself (``GoldenFailure``,
``GoldenSkip``). A check either passes, skips (``GoldenSkip``) or raises ``GoldenFailure``; the
others are mapped to a ``GoldenFailure`` of their golden by the runner.
"""

from __future__ import annotations

from collections.abc import Sequence


class GoldenFailure(AssertionError):
    """A golden check failed; the message carries producer, engine, format and statistics.

    ``check`` names what failed (``load``, ``reproduce``, ``data``, ``graph``, ``integrity``,
    ``manifest``, ...) and ``error`` the exception type that made it fail (None when a
    comparison failed): what a known break's expectation is matched against."""

    def __init__(self, message: str, check: str = "", error: str | None = None) -> None:
        super().__init__(message)
        self.check, self.error = check, error

    #: a numeric failure's drift numbers (max_steps, mismatched, min_sqnr_db, limit_steps), so
    #: the report can plot failed checks against their limit; empty for other failures
    drift: dict[str, float] = {}  # noqa: RUF012 (replaced per instance, never mutated)


class GoldenSkip(Exception):
    """The check cannot run here (engine or subject unavailable); the message says why."""


class IntegrityError(AssertionError):
    """A golden file's bytes do not match its manifest (names file, expected and actual hash)."""


class ManifestProblem(ValueError):
    """A manifest this qbc cannot trust or read; the message names the file and the problem."""


class UnknownName(KeyError):
    """An unknown subject, case, engine or format; the message names it and the known ones."""

    def __init__(self, kind: str, name: str, known: Sequence[str]) -> None:
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(known) or '(none)'}")
        self.kind, self.name = kind, name

    def __str__(self) -> str:
        return str(self.args[0])


_ID_PARTS = ("subject", "producer", "engine", "case")


def golden_failure(
    golden_id: str,
    fmt: str,
    what: str,
    detail: str,
    check: str = "",
    error: str | None = None,
) -> GoldenFailure:
    """The failure of one check of golden ``golden_id`` (``subject/producer/engine/case``).

    The first line names what went wrong and where, spelled out so a reader of a CI log needs no
    knowledge of the id's layout; the detail (statistics, diff, cause) follows.
    """
    parts = golden_id.split("/")
    where = (
        ", ".join(f"{k} {v}" for k, v in zip(_ID_PARTS, parts, strict=True))
        if len(parts) == len(_ID_PARTS)
        else f"golden {golden_id}"
    )
    return GoldenFailure(f"{what}: {where}, format {fmt}\n{detail}", check=check, error=error)
