"""Downstream consumers of exported goldens (harness/downstream.py) as runner checks.

Most tests replace a consumer's lowering with a stand-in (the runner's handling of what a
runtime gives back is what they specify, and a real lowering costs seconds); the last one lowers
one committed golden with every real consumer, skipped without the ``downstream`` extra.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import pytest
import torch

from harness import downstream, isolation, scope
from harness.cli import xdist_scope
from harness.outcomes import GoldenFailure, GoldenSkip
from harness.policy import KnownBreak, Policy, Where
from harness.results import CheckResult
from harness.store import iter_goldens
from harness.verify import CheckItem, collect, known_break, run_check

STORE = Path(__file__).resolve().parents[2] / "golden"
CASE = "pt2e_two_linear"
POLICY = Policy.load()


def _golden(producer: str = "torch-2.13.0_qbc-0.1.0", case: str = CASE):
    (golden,) = [
        g
        for g in iter_goldens(STORE)
        if g.subject == "qbc" and g.producer == producer and g.case == case
    ]
    return golden


def _expected(golden) -> torch.Tensor:
    return torch.load(golden.path("expected"), weights_only=True)


# Stand-in lowerings. Lowerings run in harness.isolation's worker processes, which import what
# they run by name: these are module-level, and installed there too (install_stand_in).


def lower_faithfully(program, inputs):  # type: ignore[no-untyped-def]
    return downstream.Lowered(program.module()(*inputs))


def lower_100_off(program, inputs):  # type: ignore[no-untyped-def]
    return downstream.Lowered(program.module()(*inputs) + 100.0)


def lower_counting_warm_ups(program, inputs):  # type: ignore[no-untyped-def]
    # the delegate count carries how many consumers this process was warmed up for
    return downstream.Lowered(
        program.module()(*inputs), delegates=downstream.warm_up.cache_info().currsize
    )


def lower_leaving_layer_norm_outside(program, inputs):  # type: ignore[no-untyped-def]
    return downstream.Lowered(
        program.module()(*inputs), delegates=2, outside=("aten.native_layer_norm.default",)
    )


def lower_aborting(program, inputs):  # type: ignore[no-untyped-def]
    os.abort()


def lower_without_a_kernel(program, inputs):  # type: ignore[no-untyped-def]
    raise NotImplementedError("no kernel for quantized_max_pool2d")


def install_stand_in(lower: str, whole_graph_delegated: bool) -> None:
    """Register consumer ``stand_in`` lowering with the function named ``lower``."""
    downstream.CONSUMERS["stand_in"] = downstream.Consumer(
        "stand_in", (), (), isolation.resolve(lower), "test stand-in", whole_graph_delegated
    )
    downstream.MEMO["stand_in"] = {}


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch):
    """Install a consumer ``stand_in`` whose lowering is the given function, here and (for a
    module-level function) in every worker task child."""
    stack = contextlib.ExitStack()

    def install(lower, whole_graph_delegated: bool = False) -> str:
        consumer = downstream.Consumer(
            "stand_in", (), (), lower, "test stand-in", whole_graph_delegated
        )
        monkeypatch.setitem(downstream.CONSUMERS, "stand_in", consumer)
        monkeypatch.setitem(downstream.MEMO, "stand_in", {})
        with contextlib.suppress(TypeError):  # a closure: used in this process only
            name = isolation.task_name(lower)
            stack.enter_context(
                isolation.setup_in_workers(install_stand_in, name, whole_graph_delegated)
            )
        return "stand_in"

    with stack:
        yield install


def test_collect_adds_one_check_per_consumer_to_every_exported_golden() -> None:
    plain = collect(STORE)
    both = collect(STORE, ("executorch", "onnxruntime"))
    exported = [i for i in plain if i.fmt == "exported"]
    extra = [i for i in both if i.consumer]
    # two consumers: two extra checks per exported golden, and none for any other format
    assert len(both) == len(plain) + 2 * len(exported)
    assert {i.fmt for i in extra} == {"exported"}
    assert f"{_golden().id}/exported@onnxruntime" in {i.id for i in extra}


def test_downstream_checks_scoped_to_current_lower_only_todays_exported_goldens() -> None:
    items = collect(STORE, ("onnxruntime",), downstream_producers="current")
    lowered = {i.golden.producer for i in items if i.consumer}
    read = {i.golden.producer for i in items if i.fmt == "exported" and not i.consumer}

    assert lowered == {scope.todays_producer("qbc")}
    assert len(read) > 1  # every producer's exported goldens are still read by today's torch


def test_qbc_verify_runs_every_check_of_one_consumer_on_one_xdist_worker() -> None:
    # one work unit per consumer: its worker process (runtime imported and warmed up) starts
    # once per run, not once per xdist worker; every other check is a unit of its own
    items = collect(STORE, ("onnxruntime", "inductor"))
    units: dict[str, set[str]] = {}
    for item in items:
        nodeid = f"harness/verify.py::test_golden[{item.id}]"
        units.setdefault(item.consumer or "golden", set()).add(xdist_scope(nodeid))
    assert units["onnxruntime"] == {"downstream:onnxruntime"}
    assert units["inductor"] == {"downstream:inductor"}
    assert len(units["golden"]) == len([i for i in items if not i.consumer])


def test_a_downstream_result_keeps_its_id_and_names_its_golden_format() -> None:
    cid = f"{_golden().id}/exported@executorch_xnnpack"
    result = CheckResult.from_id(cid, "passed")
    assert (result.id, result.base_format) == (cid, "exported")


def test_a_consumer_without_its_runtime_is_skipped_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(downstream, "_has_module", lambda name: False)
    reason = downstream.unavailable_reason("executorch_xnnpack")
    assert reason is not None
    assert "'qbc[downstream]'" in reason
    assert f"torch=={torch.__version__.split('+')[0]}" in reason  # never an unpinned torch
    with pytest.raises(GoldenSkip, match=r"qbc\[downstream\]"):
        run_check(CheckItem(_golden(), "exported", "executorch_xnnpack"), POLICY)


def test_without_isolation_a_downstream_check_is_skipped(
    monkeypatch: pytest.MonkeyPatch, stand_in
) -> None:
    name = stand_in(lower_faithfully)
    monkeypatch.setenv("QBC_ISOLATION", "0")
    with pytest.raises(GoldenSkip, match="forked child"):
        run_check(CheckItem(_golden(), "exported", name), POLICY)


def test_a_consumer_reproducing_the_stored_output_passes(stand_in) -> None:
    name = stand_in(lower_faithfully)
    verdict = run_check(CheckItem(_golden(), "exported", name), POLICY)
    assert verdict is not None and verdict.ok


def test_a_lowering_runs_in_a_worker_warmed_up_for_its_consumer(stand_in) -> None:
    # one warm-up (of this consumer) in the zygote the lowering child was forked from; a worker
    # for other tasks warms up none
    name = stand_in(lower_counting_warm_ups)
    verdict = run_check(CheckItem(_golden(), "exported", name), POLICY)
    assert verdict is not None and verdict.judged is not None
    assert verdict.judged.delegates == 1


def test_a_consumer_output_beyond_policy_fails_the_downstream_check(stand_in) -> None:
    # 2 output steps off on every element: beyond any consumer's rule (at most 2 steps on a
    # fraction of the elements), and the stand-in matches no rule of its own
    name = stand_in(lower_100_off)
    with pytest.raises(GoldenFailure, match="stand_in: output differs") as info:
        run_check(CheckItem(_golden(), "exported", name), POLICY)
    assert info.value.check == "downstream"


def test_ops_left_outside_the_delegate_fail_the_delegation_check(stand_in) -> None:
    name = stand_in(lower_leaving_layer_norm_outside, whole_graph_delegated=True)
    with pytest.raises(GoldenFailure, match=r"outside: aten\.native_layer_norm\.default") as info:
        run_check(CheckItem(_golden(), "exported", name), POLICY)
    assert info.value.check == "delegation"


def test_a_runtime_that_aborts_fails_only_that_golden(stand_in) -> None:
    # ExecuTorch's kernels abort the process on a failed assertion (measured: a float zero
    # point in dequantize_per_channel); the lowering runs in a child, so this is one failure.
    name = stand_in(lower_aborting)
    with pytest.raises(GoldenFailure, match="native crash") as info:
        run_check(CheckItem(_golden(), "exported", name), POLICY)
    assert info.value.error == "NativeCrash"


def test_a_lowering_error_names_its_exception_type(stand_in) -> None:
    name = stand_in(lower_without_a_kernel)
    with pytest.raises(GoldenFailure, match="lowering failed") as info:
        run_check(CheckItem(_golden(), "exported", name), POLICY)
    assert info.value.error == "NotImplementedError"


def test_the_same_program_from_two_releases_is_lowered_once(stand_in) -> None:
    calls = []

    def lower(program, inputs):
        calls.append(1)
        return downstream.Lowered(program.module()(*inputs))

    name = stand_in(lower)
    first = downstream.lower_and_run(name, str(_golden().path("exported")), _inputs(_golden()), {})
    memo = {first["key"]: {k: first[k] for k in ("output", "delegates", "outside")}}
    # torch 2.14.1 wrote the same program (graph, weights, inputs) as torch 2.13.0
    again = downstream.lower_and_run(
        name, str(_golden("torch-2.14.1_qbc-0.1.0").path("exported")), _inputs(_golden()), memo
    )
    assert (first["memo"], again["memo"], again["key"]) == (False, True, first["key"])
    assert len(calls) == 1


def test_the_program_key_changes_with_any_weight() -> None:
    golden = _golden()
    program = torch.export.load(str(golden.path("exported")))
    key = downstream.program_key(program, _inputs(golden))
    name = next(iter(program.state_dict))
    program.state_dict[name] = program.state_dict[name] + 1
    assert downstream.program_key(program, _inputs(golden)) != key


def _inputs(golden) -> tuple[torch.Tensor, ...]:
    return tuple(torch.load(golden.path("input"), weights_only=True))


def test_policy_rules_and_known_breaks_match_on_the_consumer() -> None:
    policy = Policy({"default": {}, "rule": [{"consumer": "onnxruntime", "max_steps": 2}]})
    where = Where("qbc", "reference", CASE, "p", "downstream", "avx2", "avx2")
    onnx = dataclasses.replace(where, consumer="onnxruntime")
    assert policy.tolerance(onnx, "float32").max_steps == 2
    assert policy.tolerance(where, "float32").max_steps == 0  # "torch": the rule does not apply
    entry = KnownBreak("b", "r", consumer="onnxruntime", case=CASE, raises="ConversionError")
    golden = _golden()
    assert known_break(CheckItem(golden, "exported", "onnxruntime"), [entry]) is entry
    assert known_break(CheckItem(golden, "exported"), [entry]) is None


@pytest.mark.parametrize("consumer", downstream.consumer_names())
def test_every_consumer_runs_a_committed_golden_within_policy(consumer: str) -> None:
    reason = downstream.unavailable_reason(consumer)
    if reason:
        pytest.skip(reason)
    result = run_check(CheckItem(_golden(), "exported", consumer), POLICY)
    assert result.ok
    # XNNPACK takes the whole Linear -> Linear program as one delegate
    assert result.judged.delegates == (1 if consumer == "executorch_xnnpack" else None)


def test_inductor_consumers_are_skipped_where_aten_is_capped_below_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # an emulation gap (harness.isa.aten_capped): Inductor's compiled kernels and a capped ATen
    # disagree on one CPU, which no real CPU of the capped class does
    monkeypatch.setattr(downstream.isa, "aten_capped", lambda env=None: True)
    monkeypatch.setattr(downstream, "_cxx_compiler", lambda: "g++")
    for name in ("inductor", "inductor_freezing"):
        assert "emulation gap" in (downstream.unavailable_reason(name) or "")
