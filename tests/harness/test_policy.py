"""Tolerance policy and known-breaks matching (numbers in quantization steps of the output)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from harness.compat import expected_torch_deprecations
from harness.policy import KnownBreak, Policy, PolicyError, Where, compare_leaf, in_range, judge

REPO = Path(__file__).resolve().parents[2]
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


def test_an_isa_rule_applies_only_to_approx_comparisons() -> None:
    rule = {"isa_mode": "approx", "golden_isa": "avx512*", "max_steps": 1, "mismatch_budget": 1.0}
    policy = Policy({"default": {}, "rule": [rule]})
    across = Where(**{**WHERE.__dict__, "golden_isa": "avx512_vnni"})
    exact = judge(q([11]), q([10]), policy, across)
    approx = judge(q([11]), q([10]), policy, Where(**{**across.__dict__, "isa_mode": "approx"}))
    assert not exact.ok and approx.ok


def test_rules_compose_per_key_keeping_what_another_rule_granted() -> None:
    # The fp32 rule grants 0.001 steps of noise per element; an ISA rule that grants one step
    # on a budget and says atol 0 must not take the 0.001 back (file order does not matter).
    fp32 = {"dtype": "float*", "atol_steps": 0.001, "max_steps": 0.001, "min_sqnr_db": 60.0}
    isa_rule = {"isa_mode": "approx", "atol_steps": 0, "max_steps": 1, "min_sqnr_db": 30.0}
    where = Where(**{**WHERE.__dict__, "isa_mode": "approx"})
    for rules in ([fp32, isa_rule], [isa_rule, fp32]):
        tol = Policy({"default": {}, "rule": rules}).tolerance(where, "float32")
        assert (tol.atol_steps, tol.max_steps, tol.min_sqnr_db) == (0.001, 1, 30.0)


def test_the_default_holds_for_a_limit_no_rule_sets() -> None:
    policy = Policy({"default": {"min_sqnr_db": 20.0}, "rule": [{"max_steps": 2}]})
    tol = policy.tolerance(WHERE, "quint8")
    assert (tol.max_steps, tol.min_sqnr_db) == (2, 20.0)


def test_a_budget_above_zero_allows_at_least_one_element() -> None:
    # 5 % of 4 elements floors to 0; a rule that grants a budget means at least one element.
    policy = Policy({"default": {}, "rule": [{"max_steps": 1, "mismatch_budget": 0.05}]})
    assert judge(q([10, 20, 30, 41]), q([10, 20, 30, 40]), policy, WHERE).ok
    assert not judge(q([10, 20, 31, 41]), q([10, 20, 30, 40]), policy, WHERE).ok


def test_an_unknown_rule_key_is_refused_naming_it() -> None:
    with pytest.raises(PolicyError, match="isa_changed"):
        Policy({"rule": [{"isa_changed": True, "max_steps": 1}]})


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


#: output dtypes a rule can name (torch dtype names; python types of non-tensor leaves)
DTYPES = ("float32", "float16", "bfloat16", "float64", "quint8", "qint8", "qint32", "int64")
DTYPES += ("int32", "int8", "uint8", "bool", "int", "float", "str")


def _known_values() -> dict[str, list[str]]:
    """Every value a rule's match key can meet: today's catalogue, the store's producers."""
    from harness.isa import CLASSES
    from harness.policy import ISA_MODES
    from harness.store import iter_goldens
    from harness.subjects import all_cases, get_subject, subject_names

    cases = all_cases()
    return {
        "subject": subject_names(),
        "engine": sorted({e for s in subject_names() for e in get_subject(s).engines()}),
        "case": sorted({c.name for c in cases}),
        "dtype": list(DTYPES),
        "producer": sorted({g.producer for g in iter_goldens(REPO / "golden")}),
        "check": ["data", "load", "reproduce"],
        "golden_isa": list(CLASSES),
        "machine_isa": list(CLASSES),
        "isa_mode": list(ISA_MODES),
    }


def test_the_committed_policy_has_no_rule_that_cannot_be_met_or_never_matches() -> None:
    assert Policy.load().lint(_known_values()) == []


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"max_steps": -1, "reason": "r"}, "cannot be met"),
        ({"mismatch_budget": 1.5, "reason": "r"}, "over 1"),
        ({"atol_steps": 2, "max_steps": 1, "reason": "r"}, "above max_steps"),
        ({"engine": "tpu", "max_steps": 1, "reason": "r"}, "never matches"),
        ({"golden_isa": "avx512_vnni", "max_steps": 1, "reason": "r"}, "isa_mode = 'approx'"),
        ({"golden_isa": "avx3", "isa_mode": "approx", "max_steps": 1, "reason": "r"}, "never"),
        ({"engine": "fbgemm", "reason": "r"}, "grants no limit"),
        ({"max_steps": 1}, "says no reason"),
    ],
)
def test_the_lint_names_a_rule_that_cannot_work(rule: dict, problem: str) -> None:
    (found,) = Policy({"rule": [rule]}).lint(_known_values())
    assert problem in found
