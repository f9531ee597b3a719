"""Per-engine goldens and the coverage gate, on the committed store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import PRODUCER_ID, STORE, golden_dir, manifest

from harness.compat import expected_torch_deprecations
from harness.manifest import producer_id
from harness.policy import Policy, flatten
from harness.report import coverage
from harness.verify import collect, run_check


def _expected(store: Path, engine: str, case: str) -> dict:
    path = (
        store
        / "torch_ao"
        / PRODUCER_ID
        / manifest(store, engine, case)["files"]["expected"]["path"]
    )
    with expected_torch_deprecations():  # quint8 outputs of torch.ao
        return flatten(torch.load(path, weights_only=True))


@pytest.mark.parametrize("case", ["conv2d", "conv2d_relu"])
def test_qnnpack_and_fbgemm_goldens_differ_and_both_pass_policy(case: str) -> None:
    # fbgemm's default qconfig uses reduce_range (7-bit activations) and qnnpack's does not, so
    # the calibrated output scale, and with it the stored integer codes, must differ.
    fb, qn = _expected(STORE, "fbgemm", case), _expected(STORE, "qnnpack", case)
    out_fb, out_qn = fb["output"], qn["output"]
    assert out_fb.q_scale() != out_qn.q_scale() or not torch.equal(
        out_fb.int_repr(), out_qn.int_repr()
    )
    policy = Policy.load()
    checks = [
        i
        for i in collect(STORE)
        if (i.golden.subject, i.golden.producer, i.golden.case) == ("torch_ao", PRODUCER_ID, case)
        and i.golden.engine in ("fbgemm", "qnnpack")
    ]
    checks = [i for i in checks if i.fmt in ("expected", "scripted")]
    assert len(checks) == 4
    for item in checks:
        assert run_check(item, policy).ok


def test_current_producer_covers_every_case_engine_format() -> None:
    report = coverage(STORE, producer_id())
    assert report["missing"] == [], "regenerate: python tools/regen_goldens.py"
    assert report["orphaned"] == []
    assert report["covered"] == report["expected"] > 0


def test_coverage_gate_sees_a_missing_golden(store_copy: Path) -> None:
    shutil.rmtree(golden_dir(store_copy, "x86", "conv2d"))
    report = coverage(store_copy, PRODUCER_ID)
    assert "torch_ao/x86/conv2d/expected" in report["missing"]


def test_coverage_gate_sees_a_golden_of_a_removed_case(store_copy: Path) -> None:
    # A golden folder whose case is not in today's table (as after deleting a case row).
    shutil.copytree(
        golden_dir(store_copy, "x86", "conv2d"), golden_dir(store_copy, "x86", "conv9d")
    )
    manifest_path = golden_dir(store_copy, "x86", "conv9d") / "manifest.json"
    manifest_path.write_text(
        manifest_path.read_text().replace('"case": "conv2d"', '"case": "conv9d"')
    )
    report = coverage(store_copy, PRODUCER_ID)
    assert "torch_ao/x86/conv9d/expected" in report["orphaned"]
