"""Subjects: the quantization implementations under test, each behind one small adapter.

To plug in your own implementation, write an object satisfying :class:`Subject` and either add it
to :data:`BUILTIN_SUBJECTS` or expose it as an entry point in the ``qbc.subjects`` group::

    [project.entry-points."qbc.subjects"]
    mylib = "mylib.qbc_adapter:SUBJECT"

The adapter only answers four questions: what is your name, which engines do you have, is an
engine usable here (and if not, why), and which cases do you have. Everything else (formats,
store, runner, report) is shared. A case row's builder does the subject-specific work.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
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


def subject_names() -> list[str]:
    """Names of every registered subject (built-in first, then plug-ins)."""
    names = dict(BUILTIN_SUBJECTS)
    names.update(_entry_point_subjects())
    return list(names)


@functools.cache
def get_subject(name: str) -> Subject:
    """The subject adapter called ``name``; :class:`UnknownName` if there is none."""
    spec = {**BUILTIN_SUBJECTS, **_entry_point_subjects()}.get(name)
    if spec is None:
        raise UnknownName("subject", name, subject_names())
    module_name, _, attr = spec.partition(":")
    subject = getattr(importlib.import_module(module_name), attr)
    if not isinstance(subject, Subject):
        raise TypeError(f"{spec} does not implement harness.subjects.Subject")
    return subject


def check_engine(subject: Subject, engine: str) -> None:
    """Raise :class:`UnknownName` if ``engine`` is not one of the subject's engines."""
    if engine not in subject.engines():
        raise UnknownName(f"{subject.name} engine", engine, subject.engines())


@contextlib.contextmanager
def no_engine() -> Iterator[None]:
    """A do-nothing engine context, for subjects whose engines need no global switch."""
    yield


def all_cases(subject: str | None = None) -> list[Case]:
    """Every case of every registered subject (or of one), in catalogue order."""
    names = [subject] if subject else subject_names()
    return [c for n in names for c in get_subject(n).cases()]


def get_case(subject: str, name: str) -> Case:
    """The case ``name`` of ``subject``; :class:`UnknownName` naming it when there is none."""
    cases = get_subject(subject).cases()
    for case in cases:
        if case.name == name:
            return case
    raise UnknownName(f"{subject} case", name, [c.name for c in cases])
