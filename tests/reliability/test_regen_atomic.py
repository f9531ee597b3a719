"""Atomic regeneration: ``tools/regen_goldens.py`` SIGKILLed at any write step leaves the store
byte-identical to before (or, after the one atomic exchange, entirely new); two regenerations
at once are refused by a lock with a clear message.

Kill points come from the tool's own hook: every write step calls ``harness.atomic.write_step``
and ``QBC_KILL_AT=N`` makes the process SIGKILL itself at the N-th. Most runs are forked from
this process (torch already imported, so one run costs a fraction of a second); one run is a
fresh ``python tools/regen_goldens.py`` subprocess, the way CI would call it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from harness import atomic
from harness.lock import regen_lock
from harness.store import iter_goldens

from .reliability_helpers import REPO, snapshot

TOOL = REPO / "tools" / "regen_goldens.py"
# Two cheap goldens (observers, one engine), this CPU's own ISA class only (a lower class is
# built in a worker and added like any file; tests/harness/test_isa_goldens.py covers it):
# a run is ~16 write steps.
SELECTION = [
    "--subject", "torch_ao", "--case", "per_*_observer", "--engine", "fbgemm", "--classes", "own",
]  # fmt: skip


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("regen_goldens_under_test", TOOL)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def quiet_fds() -> Iterator[None]:
    """Point fds 1 and 2 at /dev/null (the tool's progress bar) in a forked child."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    yield


def regen_forked(tool: ModuleType, store: Path, env: dict[str, str]) -> int:
    """Run the tool's main() in a forked child with ``env`` added; its wait status."""
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 99
        try:
            import torch

            torch.set_num_threads(1)
            os.environ.update(env)
            atomic.reset_steps()
            with quiet_fds():
                code = tool.main(["--store", str(store), *SELECTION])
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.fixture
def before(tool: ModuleType, tmp_path: Path) -> Path:
    """A store holding the two goldens, written by the tool itself."""
    store = tmp_path / "golden"
    status = regen_forked(tool, store, {})
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return store


def steps_of_one_run(tool: ModuleType, store: Path, trace: Path) -> list[str]:
    status = regen_forked(tool, store, {"QBC_WRITE_TRACE": str(trace)})
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return [line.split(" ", 1)[1] for line in trace.read_text().splitlines()]


def assert_intact(store: Path) -> None:
    goldens = iter_goldens(store)
    assert len(goldens) == 2 and [g.id for g in goldens if g.problem] == []
    for g in goldens:
        for fmt in g.formats:
            g.path(fmt)  # raises on any mismatch


def test_sigkill_at_every_write_step_leaves_the_store_as_before_or_wholly_new(
    tool: ModuleType, before: Path, tmp_path: Path
) -> None:
    steps = steps_of_one_run(tool, before, tmp_path / "trace")
    commit = steps.index(next(s for s in steps if s.startswith("commit ")))
    # 1 staging + 2 x (5 files + manifest) + garbage collection + commit; then the exchange.
    assert commit + 1 >= 10, steps
    old = snapshot(before)
    killed_before_commit = 0
    for n in range(1, len(steps) + 1):
        status = regen_forked(tool, before, {"QBC_KILL_AT": str(n)})
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (n, steps)
        now = snapshot(before)
        if n <= commit + 1:  # killed at or before the commit step: nothing is in the store yet
            assert now == old, f"kill at step {n} ({steps[n - 1]}) changed the store"
            killed_before_commit += 1
        else:  # killed after the exchange: the new producer is complete and intact
            assert_intact(before)
            old = now
    assert killed_before_commit >= 10
    # Leftovers are outside the store, and the next regeneration clears them.
    assert atomic.staging_root(before).exists()
    status = regen_forked(tool, before, {})
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert not atomic.staging_root(before).exists()
    assert_intact(before)


def test_sigkill_of_the_real_tool_subprocess_leaves_the_store_byte_identical(
    before: Path,
) -> None:
    old = snapshot(before)
    env = {**os.environ, "QBC_KILL_AT": "9"}  # mid-way: the second golden's files
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--store", str(before), *SELECTION],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert snapshot(before) == old


def test_a_second_regeneration_is_refused_naming_the_store_and_the_holder(
    tool: ModuleType, before: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    holder = os.fork()
    if holder == 0:  # child: another regeneration in progress
        try:
            with regen_lock(before):
                os.write(ready_w, b"x")
                os.read(release_r, 1)
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"x"
        old = snapshot(before)

        code = tool.main(["--store", str(before), *SELECTION])

        err = capsys.readouterr().err
        assert code == 2
        assert f"another regeneration (process {holder}) is writing the golden store" in err
        assert str(before) in err
        assert snapshot(before) == old
    finally:
        os.write(release_w, b"x")
        os.waitpid(holder, 0)
        for fd in (ready_r, ready_w, release_r, release_w):
            os.close(fd)


def test_the_lock_of_a_killed_regeneration_does_not_outlive_it(
    tool: ModuleType, before: Path
) -> None:
    ready_r, ready_w = os.pipe()
    holder = os.fork()
    if holder == 0:
        try:
            with regen_lock(before):
                os.write(ready_w, b"x")
                signal.pause()
        finally:
            os._exit(0)
    assert os.read(ready_r, 1) == b"x"
    os.kill(holder, signal.SIGKILL)
    os.waitpid(holder, 0)
    os.close(ready_r)
    os.close(ready_w)

    with regen_lock(before):  # would raise RegenLocked if the lock were stale
        pass


def test_a_regeneration_that_fails_leaves_no_staging_folder(
    before: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness import generate as gen

    def failing_build(*args: object, **kwargs: object) -> None:
        raise RuntimeError("builder failed (as the TorchScript flake of issue 12 did)")

    monkeypatch.setattr(gen, "write_golden", failing_build)
    old = snapshot(before)
    with pytest.raises(RuntimeError, match="builder failed"):
        gen.generate(before, subjects=["torch_ao"], case_glob="per_*_observer", engines=["fbgemm"])
    assert snapshot(before) == old
    assert not atomic.staging_root(before).exists()
