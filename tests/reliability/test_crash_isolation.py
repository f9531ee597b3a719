"""Crash isolation: a load that crashes natively or hangs is that golden's failure; the run
(this very test process, and the other checks after it) carries on.

Readers are replaced by ones that abort, segfault or hang (a real corrupt TorchScript archive
that aborts is not reproducible across torch builds); the isolation around them is the real one.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import time
import uuid
import warnings
from pathlib import Path

import pytest

import harness.isolation as isolation
from harness import recorded_warnings
from harness.formats import FORMATS, LoadContext, get_format
from harness.formats.torchscript import read_module
from harness.verify import collect, forget_planned, plan_checks, run_check

from .reliability_helpers import LINEAR, golden_id, run_checks


def patch_reader(monkeypatch: pytest.MonkeyPatch, fmt: str, read) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(FORMATS, fmt, dataclasses.replace(get_format(fmt), read=read))


def aborting_read(path, ctx):  # type: ignore[no-untyped-def]
    os.abort()  # what TorchScript's C++ reader does on some corrupt archives


def segfaulting_read(path, ctx):  # type: ignore[no-untyped-def]
    ctypes.string_at(0)  # read from address 0: SIGSEGV


def hanging_read(path, ctx):  # type: ignore[no-untyped-def]
    time.sleep(3600)


#: differs in every process that imports this module: a worker child imports it afresh
CHILD_TOKEN = uuid.uuid4().hex


def read_naming_its_child(path, ctx):  # type: ignore[no-untyped-def]
    warnings.warn(f"loaded in child {CHILD_TOKEN}", stacklevel=1)
    return read_module(path, ctx)


def test_a_goldens_torchscript_loads_share_one_worker_child_when_the_runner_announces_them(
    store: Path, policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_reader(monkeypatch, "scripted", read_naming_its_child)
    patch_reader(monkeypatch, "traced", read_naming_its_child)
    items = [i for i in collect(store) if i.golden.id == golden_id(LINEAR)]
    torchscript = [i for i in items if i.fmt in ("scripted", "traced")]

    def children(announced: list) -> set[str]:  # type: ignore[type-arg]
        forget_planned()
        plan_checks(announced)
        seen = set()
        for item in torchscript:
            with recorded_warnings.recording() as caught:
                run_check(item, policy)  # passes: the reader is torch's own behind the warning
            seen |= {str(w.message) for w in caught if "loaded in child" in str(w.message)}
        return seen

    assert len(children(items)) == 1  # announced: one child loads both archives
    assert len(children([])) == 2  # nothing announced: one child per check, as before


@pytest.mark.parametrize(
    ("read", "signal_name"), [(aborting_read, "SIGABRT"), (segfaulting_read, "SIGSEGV")]
)
def test_a_native_crash_while_loading_is_that_goldens_failure(
    store: Path, policy, monkeypatch: pytest.MonkeyPatch, read, signal_name: str
) -> None:
    patch_reader(monkeypatch, "scripted", read)
    parent = os.getpid()

    outcomes = {o.fmt: o for o in run_checks(store, LINEAR, policy=policy)}

    assert os.getpid() == parent  # we are still here
    crashed = outcomes.pop("scripted")
    assert crashed.kind == "failed"
    assert "native crash while loading: subject torch_ao" in crashed.message
    assert f"({signal_name})" in crashed.message
    assert "case linear, format scripted" in crashed.message
    # The checks after the crashing one still ran and passed.
    assert {o.kind for o in outcomes.values()} == {"passed"}
    assert "traced" in outcomes and "state_dict_legacy" in outcomes


def test_a_hanging_load_is_killed_after_the_bound_and_fails_that_golden(
    store: Path, policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_reader(monkeypatch, "traced", hanging_read)
    monkeypatch.setattr(isolation, "LOAD_TIMEOUT", 1.0)

    start = time.perf_counter()
    (outcome,) = run_checks(store, LINEAR, {"traced"}, policy)
    took = time.perf_counter() - start

    assert outcome.kind == "failed"
    assert "load took too long" in outcome.message and "within 1 s" in outcome.message
    # 1 s bound + fork/kill/reap; far below the hour the reader would sleep
    assert took < 30


def test_a_crashing_load_fails_one_check_of_a_pytest_run_which_completes(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner as users run it (pytest with the qbc plugin), in this process: the crash is
    # one failed row of the results, every other check has its own outcome, pytest returns.
    import harness.verify

    patch_reader(monkeypatch, "scripted", aborting_read)
    results = tmp_path / "results.json"
    code = pytest.main(
        [
            harness.verify.__file__,
            "--qbc-store",
            str(store),
            "--qbc-results",
            str(results),
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "-qq",
            "--tb=no",
            # harness is imported already in this process: plain asserts, no rewrite warning
            "--assert=plain",
            "-k",
            LINEAR,
        ]
    )

    rows = {r["id"]: r for r in json.loads(results.read_text())}
    assert code == pytest.ExitCode.TESTS_FAILED
    crashed = rows.pop(f"{golden_id(LINEAR)}/scripted")
    assert crashed["outcome"] == "failed" and "SIGABRT" in crashed["message"]
    assert len(rows) == 6 and {r["outcome"] for r in rows.values()} == {"passed"}


@pytest.mark.parametrize(
    ("fmt", "trusted", "isolated"),
    [
        ("scripted", False, True),  # TorchScript's C++ reader
        ("traced", False, True),
        ("exported", False, True),  # torch.export's deserializer
        ("package", False, True),  # runs the package's code
        ("state_dict", True, True),  # a case's trusted load: full unpickling
        ("state_dict", False, False),  # torch.load(weights_only=True): in process
        ("safetensors", False, False),
        ("input", False, False),
    ],
)
def test_loads_that_parse_natively_or_run_code_are_the_isolated_ones(
    fmt: str, trusted: bool, isolated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QBC_ISOLATION", raising=False)
    ctx = LoadContext((), None, "fbgemm", weights_only=not trusted)  # type: ignore[arg-type]
    assert isolation.needs_isolation(get_format(fmt), ctx) is isolated
