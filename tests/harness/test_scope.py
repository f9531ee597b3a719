"""Producer scope (harness/scope.py): which producers' goldens a run checks.

The rule is pinned on producer ids alone, as the store grows release by release; then the
README's test command, which checks the ``span`` of the committed store (pyproject's
``qbc_producers``), and ``--qbc-producers all``, which checks all of it, are run for real
(collection only)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, STORE

from harness import scope
from harness.store import iter_goldens

TODAY = "torch-2.13.0_qbc-0.2.0"
#: the store once the nine torch minors are written: qbc 0.1.0 wrote 2.6, 2.13 and 2.14; qbc
#: 0.2.0 (today's version) wrote 2.7 .. 2.12 and today's producer
GROWN = [
    "torch-2.6.0_qbc-0.1.0",
    *(f"torch-{r}_qbc-0.2.0" for r in ("2.7.1", "2.8.0", "2.9.1", "2.10.0", "2.11.0", "2.12.1")),
    "torch-2.13.0_qbc-0.1.0",
    TODAY,
    "torch-2.14.1_qbc-0.1.0",
]


def span(producers: list[str], today: str | None = TODAY) -> set[str]:
    return set(scope.select(producers, today, "span"))


def test_span_is_todays_producer_and_both_ends_of_the_release_order() -> None:
    # releases compare as numbers: as strings, 2.10 would sort before 2.6 and 2.14 before 2.6
    assert span(GROWN) == {"torch-2.6.0_qbc-0.1.0", TODAY, "torch-2.14.1_qbc-0.1.0"}


def test_a_producer_added_inside_the_release_range_leaves_the_span_as_it_was() -> None:
    assert span([*GROWN, "torch-2.9.0_qbc-0.1.0"]) == span(GROWN)


def test_a_producer_beyond_either_end_replaces_that_end() -> None:
    newer = span([*GROWN, "torch-2.15.0_qbc-0.1.0"])
    older = span([*GROWN, "torch-2.5.1_qbc-0.1.0"])

    assert newer == {"torch-2.6.0_qbc-0.1.0", TODAY, "torch-2.15.0_qbc-0.1.0"}
    assert older == {"torch-2.5.1_qbc-0.1.0", TODAY, "torch-2.14.1_qbc-0.1.0"}


def test_span_keeps_the_newest_producer_of_every_qbc_version() -> None:
    # after a bump to 0.3.0, qbc 0.2.0's goldens were written by released code that neither end
    # of the range (2.6.0, 2.14.1: qbc 0.1.0) ran: its newest producer, 2.13.0, is kept
    later = "torch-2.13.0_qbc-0.3.0"

    assert span([*GROWN, later], today=later) == {
        "torch-2.6.0_qbc-0.1.0",
        TODAY,
        later,
        "torch-2.14.1_qbc-0.1.0",
    }


def test_a_plug_in_subjects_versions_are_code_versions_too() -> None:
    plug = [f"torch-{r}_qbc-0.2.0_minq-{v}" for r in ("2.6.0", "2.8.0", "2.10.0") for v in "12"]
    today = "torch-2.13.0_qbc-0.2.0_minq-3"

    assert span([*plug, today], today) == {
        "torch-2.6.0_qbc-0.2.0_minq-1",  # oldest
        "torch-2.10.0_qbc-0.2.0_minq-1",  # newest of minq 1
        "torch-2.10.0_qbc-0.2.0_minq-2",  # newest past, newest of minq 2
        today,
    }


def test_span_of_a_store_without_todays_producer_is_its_ends() -> None:
    assert span(GROWN, today="torch-2.13.0_qbc-0.9.0") == {
        "torch-2.6.0_qbc-0.1.0",
        TODAY,  # the newest of 0.2.0
        "torch-2.14.1_qbc-0.1.0",
    }


def test_current_is_todays_producer_only_or_nothing() -> None:
    assert scope.select(GROWN, TODAY, "current") == {TODAY}
    assert scope.select(GROWN, "torch-2.13.0_qbc-0.9.0", "current") == frozenset()


def test_all_is_every_producer() -> None:
    assert scope.select(GROWN, TODAY, "all") == set(GROWN)


def test_an_unknown_scope_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'latest'.*known: all, span, current"):
        scope.select(GROWN, TODAY, "latest")


def test_scope_is_taken_per_subject_with_that_subjects_producer_of_today() -> None:
    today = scope.todays_producer("qbc")
    pairs = [
        ("qbc", today),
        ("qbc", "torch-2.6.0_qbc-0.0.1"),
        ("torch_ao", "torch-2.6.0_qbc-0.0.1"),
    ]

    # torch_ao's goldens here are all past ones: none is current
    assert scope.in_scope(pairs, "current") == {("qbc", today)}


def test_a_subject_not_installed_here_has_no_producer_of_today() -> None:
    assert scope.todays_producer("no_such_subject") is None


def collected_producers(*args: str) -> set[tuple[str, str]]:
    """(subject, producer) of every golden check ``pytest tests/bc`` collects in this checkout."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/bc/test_goldens.py", "--collect-only", "-q",
         "-p", "no:cacheprovider", *args],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ids = [line.split("[", 1)[1] for line in done.stdout.splitlines() if "test_golden[" in line]
    return {tuple(i.split("/")[:2]) for i in ids}  # type: ignore[misc]


def test_the_readme_test_command_checks_the_span_of_the_committed_store() -> None:
    committed = {(g.subject, g.producer) for g in iter_goldens(STORE)}

    assert collected_producers() == scope.in_scope(committed, "span")


def test_qbc_producers_all_checks_every_producer_of_the_committed_store() -> None:
    committed = {(g.subject, g.producer) for g in iter_goldens(STORE)}

    assert collected_producers("--qbc-producers", "all") == committed
