"""Numeric debugger inside the harness: the generator stores per-handle intermediates of an
export-based golden, and the runner names the first divergent op when a check fails.

The case is test-local (added to the ``qbc`` case table for the test only) and the store is a
temporary folder, so no committed golden is read or touched.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import harness.cases.qbc as qbc_cases
from harness import isolation, verify
from harness import store as st
from harness.cases import BuildContext, Built, Case
from harness.compat import export_module
from harness.generate import generate
from harness.outcomes import GoldenFailure
from harness.policy import Policy
from harness.quant.pt2e import (
    SymmetricQuantizer,
    convert_pt2e,
    get_symmetric_quantization_config,
    prepare_pt2e,
)
from harness.quant.pt2e.graph_utils import fetch_attr
from harness.quant.pt2e.numeric_debugger import (
    Intermediates,
    generate_numeric_debug_handle,
    get_numeric_debug_handle,
)
from harness.verify import CheckItem, run_check

CASE_NAME = "numeric_debug_conv2d_conv1d"
ENGINE = "reference"


class Conv2dThenConv1d(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv2d = torch.nn.Conv2d(3, 3, 3)
        self.conv1d = torch.nn.Conv1d(3, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1d(self.conv2d(x).squeeze(0))


def _flip_output_channels(weight: torch.Tensor) -> None:
    """Swap a weight's output channels: same values and qparams, on the wrong channels."""
    with torch.no_grad():
        weight.copy_(torch.flip(weight, dims=[0]))


def _build(ctx: BuildContext, corrupt: str | None = None) -> Built:
    """export -> debug handles on the float graph -> int8 per-tensor PTQ -> exported program.

    ``corrupt`` names a conv whose int8 weight today's code gets wrong (a simulated regression).
    """
    torch.manual_seed(ctx.case.seed)
    inputs = ctx.make_inputs()
    gm = export_module(Conv2dThenConv1d(), inputs)
    generate_numeric_debug_handle(gm)
    gm = prepare_pt2e(
        gm,
        SymmetricQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=False)),
    )
    gm(*inputs)
    gm = convert_pt2e(gm)
    if corrupt is not None:
        conv = next(n for n in gm.graph.nodes if n.name == corrupt)
        # conv <- dequantize <- get_attr of the folded int8 weight
        _flip_output_channels(fetch_attr(gm, str(conv.args[1].args[0].target)))
        gm.recompile()
    return Built(
        model=gm,
        inputs=inputs,
        expected=gm(*inputs),
        exported=torch.export.export(gm, inputs, strict=False),
    )


CASE = Case(
    "qbc",
    CASE_NAME,
    _build,
    ((1, 3, 5, 5),),
    ("input", "expected", "exported", "intermediates"),
    engines=(ENGINE,),
    seed=7,
    make_input=lambda shape, gen: torch.randn(*shape, generator=gen),
    description="Conv2d -> Conv1d, pt2e int8 per-tensor (numeric debugger acceptance)",
)


def use_test_case() -> None:
    """Make the test case the qbc subject's only case (here, and in harness.isolation's worker
    processes, which do not inherit this process's patches)."""
    qbc_cases.CASES = [CASE]


@pytest.fixture(scope="module")
def golden_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary store holding one freshly generated golden of the test case."""
    store = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp, isolation.setup_in_workers(use_test_case):
        mp.setattr(qbc_cases, "CASES", [CASE])
        result = generate(store, subjects=["qbc"], case_glob=CASE_NAME, engines=[ENGINE])
    if result.skipped:
        pytest.skip(f"engine unavailable: {result.skipped}")
    return store


@pytest.fixture
def with_case(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(qbc_cases, "CASES", [CASE])
    with isolation.setup_in_workers(use_test_case):
        yield


def _golden(store: Path) -> st.Golden:
    (golden,) = [g for g in st.iter_goldens(store) if g.case == CASE_NAME]
    return golden


def _copy_store(store: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(store, dest)
    return dest


def _replace_file(golden: st.Golden, fmt: str, new_file: Path) -> None:
    """Put ``new_file`` in place of the golden's ``fmt`` file and record it in the manifest (the
    corruption under test is of the numbers, not of the store's integrity)."""
    entry = st.add_file(
        golden.producer_dir, f"{golden.engine}/{golden.case}", new_file, True, False
    )
    manifest_path = golden.dir / st.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][fmt].update(path=entry.path, sha256=entry.sha256, size=entry.size)
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _lifted_tensor(program: torch.export.ExportedProgram, placeholder: str) -> torch.Tensor:
    """The parameter, buffer or constant tensor an exported graph's placeholder stands for."""
    sig = program.graph_signature
    for mapping in (
        sig.inputs_to_parameters,
        sig.inputs_to_buffers,
        sig.inputs_to_lifted_tensor_constants,
    ):
        if placeholder in mapping:
            name = mapping[placeholder]
            return (
                program.state_dict[name] if name in program.state_dict else program.constants[name]
            )
    raise KeyError(placeholder)


def test_generator_stores_the_intermediates_of_every_handled_op(golden_store: Path) -> None:
    golden = _golden(golden_store)
    stored = Intermediates.from_dict(torch.load(golden.path("intermediates"), weights_only=True))
    assert list(stored.ops.values()) == ["aten.conv2d", "aten.squeeze", "aten.conv1d"]
    # the last op's intermediate is the model's output
    expected = torch.load(golden.path("expected"), weights_only=True)
    assert torch.equal(stored.outputs[stored.order[-1]], expected)


def test_intact_golden_passes_every_check(golden_store: Path, with_case: None) -> None:
    golden = _golden(golden_store)
    for fmt in golden.formats:
        run_check(CheckItem(golden, fmt), Policy.load())


@pytest.mark.parametrize("conv", ["conv1d", "conv2d"])
def test_corrupted_weight_in_exported_golden_is_localized_to_its_op(
    golden_store: Path, with_case: None, tmp_path: Path, conv: str
) -> None:
    store = _copy_store(golden_store, tmp_path / "store")
    golden = _golden(store)
    program = torch.export.load(str(golden.path("exported")))
    node = next(n for n in program.graph.nodes if n.name == conv)
    handle = get_numeric_debug_handle(node)
    # the weight is an int8 constant feeding a dequantize
    _flip_output_channels(_lifted_tensor(program, node.args[1].args[0].name))
    corrupted = tmp_path / "exported.pt2"
    torch.export.save(program, str(corrupted))
    _replace_file(golden, "exported", corrupted)

    with pytest.raises(GoldenFailure) as failure:
        run_check(CheckItem(_golden(store), "exported"), Policy.load())

    message = str(failure.value)
    assert f"first divergent op: aten.{conv}, handle {handle}, SQNR " in message, message


@pytest.mark.parametrize("conv", ["conv1d", "conv2d"])
def test_reproduce_check_regression_is_localized_to_its_op(
    golden_store: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conv: str
) -> None:
    # The golden is intact; today's code quantizes one conv's weight wrongly.
    store = _copy_store(golden_store, tmp_path / "store")
    regressed = dataclasses.replace(CASE, builder=functools.partial(_build, corrupt=conv))
    monkeypatch.setattr(qbc_cases, "CASES", [regressed])
    verify.forget_builds()  # today's code changed under the runner: drop its cached builds
    golden = _golden(store)
    program = torch.export.load(str(golden.path("exported")))
    handle = get_numeric_debug_handle(next(n for n in program.graph.nodes if n.name == conv))

    with pytest.raises(GoldenFailure) as failure:
        run_check(CheckItem(golden, "expected"), Policy.load())

    message = str(failure.value)
    assert "reproduce check" in message
    assert f"first divergent op: aten.{conv}, handle {handle}, SQNR " in message, message
