"""Worker processes (harness.isolation): a long-lived zygote per environment, one forked child
per task; what happens to a task never happens to the caller or to the next task.

The task functions below are module-level, so the zygote imports them by name, as it imports
the runner's own tasks.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

import pytest
import torch

from harness import isa, isolation


def pid_and_parent() -> tuple[int, int]:
    return os.getpid(), os.getppid()


def machine_class() -> str:
    return isa.detect().cls


def aten_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def add(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"sum": a + b}


def abort() -> None:
    os.abort()


def segfault() -> None:
    ctypes.string_at(0)


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def raise_value_error() -> None:
    raise ValueError("the task's own message")


def return_a_module() -> torch.nn.Module:
    return torch.nn.Linear(2, 2)


def trains() -> float:
    # autograd in the child: its threads die with the child, the zygote never runs any
    w = torch.ones(3, requires_grad=True)
    (w * 2).sum().backward()
    return float(w.grad.sum())


SETUP_VALUE: list[str] = []


def remember(value: str) -> None:
    SETUP_VALUE.append(value)


def remembered() -> list[str]:
    return list(SETUP_VALUE)


@pytest.fixture(autouse=True)
def workers_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QBC_ISOLATION", raising=False)


def test_each_task_runs_in_its_own_child_of_one_long_lived_zygote() -> None:
    first, zygote = isolation.run(pid_and_parent)
    second, same_zygote = isolation.run(pid_and_parent)
    assert os.getpid() not in (first, second, zygote)
    assert first != second and zygote == same_zygote


def test_arguments_and_results_are_plain_data_tensors_included() -> None:
    out = isolation.run(add, torch.tensor([1, 2]), torch.tensor([10, 20]))
    assert torch.equal(out["sum"], torch.tensor([11, 22]))


def test_a_worker_started_with_a_cap_computes_in_the_capped_class() -> None:
    me = isa.detect()
    if "avx2" not in me.reachable() or me.cls == "avx2":
        pytest.skip(f"this machine ({me.describe()}) cannot be capped below its class to avx2")
    env = isa.cap_environment("avx2")
    assert isolation.run(machine_class, env=env) == "avx2"
    assert isolation.run(aten_capability, env=env) == "AVX2"
    assert isolation.run(machine_class) == me.cls  # the uncapped zygote is another process


@pytest.mark.parametrize(("task", "signal_name"), [(abort, "SIGABRT"), (segfault, "SIGSEGV")])
def test_a_native_crash_fails_that_task_and_the_next_task_runs(task, signal_name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(isolation.NativeCrash, match=signal_name):
        isolation.run(task)
    assert isolation.run(add, torch.tensor(1), torch.tensor(2))["sum"].item() == 3


def test_a_hanging_task_is_killed_after_its_timeout_and_the_zygote_lives_on() -> None:
    isolation.run(pid_and_parent)
    before = dict(isolation.zygote_pids())
    start = time.perf_counter()
    with pytest.raises(isolation.TaskTimeout, match="within 1 s"):
        isolation.run(sleep, 3600, timeout=1.0)
    assert time.perf_counter() - start < 30  # 1 s bound + kill and reap, not the hour
    assert isolation.zygote_pids() == before


def test_a_task_that_raises_reports_type_and_message() -> None:
    with pytest.raises(isolation.TaskError, match="ValueError: the task's own message"):
        isolation.run(raise_value_error)


def test_a_result_that_is_not_plain_data_is_refused_not_unpickled() -> None:
    with pytest.raises(isolation.TaskError, match="UnpicklingError"):
        isolation.run(return_a_module)


def test_a_dead_zygote_is_replaced_and_only_its_task_fails() -> None:
    _, zygote = isolation.run(pid_and_parent)
    os.kill(zygote, signal.SIGKILL)
    time.sleep(0.2)
    _, replacement = isolation.run(pid_and_parent)
    assert replacement != zygote


def test_autograd_in_a_task_leaves_the_zygote_safe_to_fork() -> None:
    assert isolation.run(trains) == 6.0
    assert isolation.run(trains) == 6.0  # forked again from the same, untouched zygote


def test_setup_in_workers_replays_run_time_state_in_each_task_child() -> None:
    with isolation.setup_in_workers(remember, "patched"):
        assert isolation.run(remembered) == ["patched"]
    assert isolation.run(remembered) == []


def test_only_module_level_functions_can_be_tasks() -> None:
    with pytest.raises(TypeError, match="module-level function"):
        isolation.run(lambda: 1)
