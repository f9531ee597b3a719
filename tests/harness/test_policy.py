"""Tolerance policy and known-breaks matching (numbers in quantization steps of the output)."""

from __future__ import annotations

import math

import torch

from harness.compat import expected_torch_deprecations
from harness.policy import KnownBreak, Policy, Where, compare_leaf, in_range, judge

WHERE = Where("torch_ao", "fbgemm", "linear", "torch-2.13.0_qbc-0.1.0", "load", "avx2", "avx2")


def q(values: list[int], scale: float = 0.5, zp: int = 0) -> torch.Tensor:
    """A quint8 tensor with the given integer codes (torch.ao outputs look like this)."""
    with expected_torch_deprecations():
        return torch._make_per_tensor_quantized_tensor(
            torch.tensor(values, dtype=torch.uint8), scale, zp
        )


def test_quantized_error_is_counted_in_integer_codes() -> None:
    # codes [10, 20, 30] vs [10, 22, 30]: one element off by 2 codes = 2 steps.
    stats = compare_leaf("y", q([10, 22, 30]), q([10, 20, 30]))
    assert stats.max_steps == 2
    assert math.isfinite(stats.sqnr_db)


def test_changed_qparams_are_a_structural_failure() -> None:
    stats = compare_leaf("y", q([10], scale=0.25), q([10], scale=0.5))
    assert stats.problem and "qparams" in stats.problem


def test_float_step_is_one_256th_level_of_the_output_range() -> None:
    # range 0..255 -> one step = 1.0; an error of 0.5 is half a step.
    expected = torch.arange(256, dtype=torch.float32)
    actual = expected.clone()
    actual[3] += 0.5
    assert compare_leaf("y", actual, expected).max_steps == 0.5


def test_default_policy_is_exact_and_reports_statistics() -> None:
    verdict = judge(q([10, 21]), q([10, 20]), Policy({"default": {}}), WHERE)
    assert not verdict.ok
    assert "max error 1 steps, 1 mismatched" in verdict.message()


def test_later_matching_rule_overrides_and_budget_is_a_fraction() -> None:
    policy = Policy(
        {
            "default": {"atol_steps": 0, "max_steps": 0},
            "rule": [
                {"engine": "qnn*", "max_steps": 9},
                {"engine": "fbgemm", "max_steps": 1, "mismatch_budget": 0.5, "reason": "r"},
            ],
        }
    )
    # 1 of 2 elements off by one step: within max_steps 1 and budget floor(0.5 * 2) = 1.
    assert judge(q([10, 21]), q([10, 20]), policy, WHERE).ok
    # 2 of 2 mismatching exceeds the budget of 1.
    assert not judge(q([11, 21]), q([10, 20]), policy, WHERE).ok


def test_isa_changed_rule_applies_only_across_isas() -> None:
    policy = Policy(
        {"default": {}, "rule": [{"isa_changed": True, "max_steps": 1, "mismatch_budget": 1.0}]}
    )
    same = judge(q([11]), q([10]), policy, WHERE)
    other = judge(
        q([11]), q([10]), policy, Where(**{**WHERE.__dict__, "producer_isa": "avx2+avx512"})
    )
    assert not same.ok and other.ok


def test_committed_policy_keeps_quantized_outputs_exact_on_the_same_machine() -> None:
    tol = Policy.load().tolerance(WHERE, "quint8")
    assert (tol.atol_steps, tol.max_steps, tol.mismatch_budget) == (0, 0, 0)


def test_version_ranges() -> None:
    assert in_range((2, 6, 0), ">=2.6.0,<2.13.0")
    assert not in_range((2, 13, 0), ">=2.6.0,<2.13.0")
    assert in_range((1, 7, 1), "*")


def test_known_break_matches_case_glob_and_producer_range() -> None:
    entry = KnownBreak(name="n", reason="r", case="conv2d_graph*", producers="<2.10", fails="graph")
    assert entry.matches("torch_ao", "conv2d_graph_v2", "fbgemm", "scripted", (2, 6, 0), (2, 13, 0))
    assert not entry.matches(
        "torch_ao", "conv2d_graph_v2", "fbgemm", "scripted", (2, 13, 0), (2, 13, 0)
    )
    assert not entry.matches("torch_ao", "linear", "fbgemm", "scripted", (2, 6, 0), (2, 13, 0))


# NaN and inf (issue 12): every comparison with NaN is False, so before NaN was judged on its
# own a NaN output passed any tolerance. A policy that tolerates anything finite shows that
# non-finite disagreements are never within tolerance.
LENIENT = Policy(
    {"default": {"atol_steps": 1e9, "max_steps": 1e9, "mismatch_budget": 1.0, "min_sqnr_db": -1e9}}
)


def test_nan_where_the_golden_is_finite_is_a_mismatch_whatever_the_tolerance() -> None:
    verdict = judge(torch.full((3,), math.nan), torch.tensor([0.5, -1.0, 2.0]), LENIENT, WHERE)
    assert not verdict.ok
    # all 3 elements disagree; the first is reported with both values
    assert "3 element(s) non-finite on one side only" in verdict.message()
    assert "first at [0], got nan, expected 0.5" in verdict.message()


def test_a_finite_value_where_the_golden_holds_nan_is_a_mismatch() -> None:
    verdict = judge(torch.tensor([1.0, 2.0]), torch.tensor([1.0, math.nan]), LENIENT, WHERE)
    assert not verdict.ok
    assert "first at [1], got 2, expected nan" in verdict.message()


def test_inf_against_a_finite_value_or_the_opposite_infinity_is_a_mismatch() -> None:
    finite = torch.tensor([1.0, 2.0])
    assert not judge(torch.tensor([1.0, math.inf]), finite, LENIENT, WHERE).ok
    assert not judge(
        torch.tensor([1.0, -math.inf]), torch.tensor([1.0, math.inf]), LENIENT, WHERE
    ).ok


def test_the_same_nan_and_inf_at_the_same_places_are_reproduced() -> None:
    golden = torch.tensor([math.nan, math.inf, -math.inf, 0.0, 255.0])
    verdict = judge(golden.clone(), golden, Policy({"default": {}}), WHERE)
    assert verdict.ok
    # the step comes from the finite values only: range 0..255 -> 1.0
    assert verdict.stats[0].step == 1.0


def test_a_nan_python_scalar_matches_only_nan() -> None:
    assert judge({"scale": math.nan}, {"scale": math.nan}, Policy({"default": {}}), WHERE).ok
    assert not judge({"scale": math.nan}, {"scale": 0.1}, LENIENT, WHERE).ok
