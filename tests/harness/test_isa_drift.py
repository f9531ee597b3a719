"""tools/isa_drift.py: from measured cross-class drift to the tightest rule that passes it."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from harness.policy import Policy, Where, judge

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("isa_drift_test", REPO / "tools/isa_drift.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(golden: str, machine: str, **kw: Any) -> dict[str, Any]:
    base = {
        "subject": "qbc",
        "case": "linear_dynamic_qint8",
        "engine": "fbgemm",
        "golden_isa": golden,
        "machine_isa": machine,
        "leaf": "output",
        "dtype": "float32",
        "numel": 4,
        "max_steps": 0.0,
        "over_0": 0,
        "over_noise": 0,
        "sqnr_db": math.inf,
        "problem": None,
    }
    return {**base, **kw}


MEASURED = {
    "machine": "avx512_vnni",
    "classes": ["avx2", "avx512_vnni"],
    "date": "2026-11-28",
    "rows": [
        row("avx2", "avx512_vnni", max_steps=0.7351, over_0=1, over_noise=1, sqnr_db=48.6),
        row("avx512_vnni", "avx2", max_steps=0.7351, over_0=1, over_noise=1, sqnr_db=48.5),
        # fp32 noise within the fp32 rule (0.001 steps): no ISA rule needed
        row("avx2", "avx512_vnni", engine="onednn", max_steps=1.2e-5, over_0=3, sqnr_db=141.4),
    ],
}


def test_the_tightest_rule_covers_the_worst_pair_rounded_up(tool: ModuleType) -> None:
    (rule,) = tool.tightest_rules(MEASURED, Policy.load())
    # 0.7351 steps -> 0.736 (3 significant digits, up); 1 of 4 elements -> 0.25; 48.5 dB floor
    assert (rule["engine"], rule["max_steps"], rule["mismatch_budget"], rule["min_sqnr_db"]) == (
        "fbgemm",
        0.736,
        0.25,
        48.5,
    )
    assert rule["isa_mode"] == "approx" and rule["atol_steps"] == 0.001
    assert "worst pair avx2 golden vs avx512_vnni" in rule["measured"]


def test_the_printed_rule_passes_the_measured_drift_and_not_one_step_more(
    tool: ModuleType,
) -> None:
    (rule,) = tool.tightest_rules(MEASURED, Policy.load())
    rule = {k: v for k, v in rule.items() if k != "measured"} | {"reason": "measured"}
    policy = Policy({"default": {}, "rule": [rule]})
    where = Where(
        "qbc", "fbgemm", "linear_dynamic_qint8", "p", "reproduce", "avx2", "avx512_vnni", "approx"
    )
    # outputs spanning 255 -> one step is 1.0: an element 0.7351 off passes, 0.75 does not
    expected = torch.tensor([0.0, 255.0, 10.0, 20.0])
    assert judge(expected + torch.tensor([0, 0, 0.7351, 0]), expected, policy, where).ok
    assert not judge(expected + torch.tensor([0, 0, 0.75, 0]), expected, policy, where).ok
    # a second element off (beyond fp32 noise) exceeds the budget of one element
    assert not judge(expected + torch.tensor([0, 0, 0.5, 0.5]), expected, policy, where).ok
