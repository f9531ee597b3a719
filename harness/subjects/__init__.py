"""Subjects: the quantization implementations under test, each behind one small adapter.

To plug in your own implementation, write an object satisfying :class:`Subject` and either add it
to :data:`BUILTIN_SUBJECTS` or expose it as an entry point in the ``qbc.subjects`` group::

    [project.entry-points."qbc.subjects"]
    mylib = "mylib.qbc_adapter:SUBJECT"

The adapter only answers four questions: what is your name, which engines do you have, is an
engine usable here (and if not, why), and which cases do you have. Everything else (formats,
store, runner, report) is shared. A case row's builder does the subject-specific work.

A plug-in subject also has a version (its ``version`` attribute, else the version of the
distribution that registers the entry point): it is part of the producer id of the goldens it
writes (``torch-2.13.0_qbc-0.1.0_mylib-0.0.2``), so goldens of each version are kept side by
side. Built-in subjects are versioned by qbc itself. docs/plugins.md has the whole contract.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import re
from collections.abc import Iterator, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from harness.outcomes import UnknownName

if TYPE_CHECKING:  # cases import torch; the registry itself stays importable without it
    from harness.cases import Case


@runtime_checkable
class Subject(Protocol):
    """The adapter interface every subject implements."""

    #: short identifier, used in the store path ``golden/<name>/...`` and in test ids
    name: str

    def engines(self) -> tuple[str, ...]:
        """Every engine this subject can target, in report order (available here or not)."""
        ...

    def unavailable_reason(self, engine: str) -> str | None:
        """None when ``engine`` can run on this machine and torch; else why not (for skips)."""
        ...

    def use_engine(self, engine: str) -> contextlib.AbstractContextManager[None]:
        """Context in which building, loading and running happen with ``engine`` selected.

        It also wraps the block in :func:`harness.compat.expected_torch_deprecations` when the
        subject calls deprecated torch APIs on purpose.
        """
        ...

    def cases(self) -> Sequence[Case]:
        """The subject's case table."""
        ...


# name -> "module:attribute"; imported lazily so `qbc cases` stays fast and a subject whose
# dependencies are missing only fails when used.
BUILTIN_SUBJECTS: dict[str, str] = {
    "torch_ao": "harness.subjects.torch_ao:SUBJECT",
    "qbc": "harness.subjects.qbc:SUBJECT",
}


def _entry_point_subjects() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group="qbc.subjects")}


def subject_names(builtin: bool = False) -> list[str]:
    """Names of every registered subject (built-in first, then plug-ins), or only the built-in
    ones (what qbc's own tests and store are about, whatever plug-ins are installed)."""
    names = dict(BUILTIN_SUBJECTS)
    if not builtin:
        names.update(_entry_point_subjects())
    return list(names)


class SubjectProblem(ValueError):
    """A plug-in subject that cannot be used as registered; the message names it."""


#: a subject version as it appears in a producer id: PEP 440-ish, no ``-`` or ``_``
_VERSION = re.compile(r"[0-9A-Za-z.+]+")


@functools.cache
def subject_version(name: str) -> str | None:
    """A plug-in subject's own version (None for the built-in subjects, versioned by qbc).

    The adapter's ``version`` attribute, else the version of the installed distribution that
    registers its entry point; ValueError naming the subject when it has neither or the version
    cannot go into a folder name.
    """
    if name in BUILTIN_SUBJECTS:
        return None
    version = getattr(get_subject(name), "version", None)
    if version is None:
        dists = [ep.dist for ep in entry_points(group="qbc.subjects", name=name)]
        version = dists[0].version if dists and dists[0] is not None else None
    if not version:
        raise SubjectProblem(
            f"plug-in subject {name!r} declares no version: give its adapter a `version` "
            "attribute (docs/plugins.md)"
        )
    if not _VERSION.fullmatch(str(version)):
        raise SubjectProblem(
            f"plug-in subject {name!r} has version {version!r}: a version in a producer id may "
            "only hold letters, digits, '.' and '+'"
        )
    return str(version)


@functools.cache
def get_subject(name: str) -> Subject:
    """The subject adapter called ``name``; :class:`UnknownName` if there is none."""
    spec = {**BUILTIN_SUBJECTS, **_entry_point_subjects()}.get(name)
    if spec is None:
        raise UnknownName("subject", name, subject_names())
    module_name, _, attr = spec.partition(":")
    subject = getattr(importlib.import_module(module_name), attr)
    if not isinstance(subject, Subject):
        raise SubjectProblem(
            f"subject {name!r} ({spec}) does not implement harness.subjects.Subject "
            "(docs/plugins.md)"
        )
    return subject


def check_engine(subject: Subject, engine: str) -> None:
    """Raise :class:`UnknownName` if ``engine`` is not one of the subject's engines."""
    if engine not in subject.engines():
        raise UnknownName(f"{subject.name} engine", engine, subject.engines())


@contextlib.contextmanager
def no_engine() -> Iterator[None]:
    """A do-nothing engine context, for subjects whose engines need no global switch."""
    yield


def all_cases(subject: str | None = None, builtin: bool = False) -> list[Case]:
    """Every case of every registered subject (or of one, or of the built-in ones), in
    catalogue order."""
    names = [subject] if subject else subject_names(builtin)
    return [c for n in names for c in get_subject(n).cases()]


def get_case(subject: str, name: str) -> Case:
    """The case ``name`` of ``subject``; :class:`UnknownName` naming it when there is none."""
    cases = get_subject(subject).cases()
    for case in cases:
        if case.name == name:
            return case
    raise UnknownName(f"{subject} case", name, [c.name for c in cases])
