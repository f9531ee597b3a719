"""The committed export-based (pt2e) goldens of the ``qbc`` subject (harness/cases/qbc_pt2e.py).

They are read from the committed store, never written: the numeric-debugger test works on a
private copy of one golden in a temporary store.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch

from harness import manifest as mf
from harness import store as st
from harness.cases.qbc_pt2e import CASES, ENGINE
from harness.graphsig import signature
from harness.outcomes import GoldenFailure
from harness.policy import Policy
from harness.quant.pt2e.numeric_debugger import Intermediates, get_numeric_debug_handle
from harness.verify import CheckItem, run_check

STORE = Path(__file__).resolve().parents[2] / "golden"
CASE_NAMES = [c.name for c in CASES]
QD = "quantized_decomposed"


def _golden(store: Path, case: str) -> st.Golden:
    (golden,) = [
        g
        for g in _goldens(store)
        if g.subject == "qbc"
        and g.producer == mf.producer_id()
        and g.engine == ENGINE
        and g.case == case
    ]
    return golden


@functools.cache  # reading every manifest of the committed store once per module is enough
def _committed_goldens() -> list[st.Golden]:
    return st.iter_goldens(STORE)


def _goldens(store: Path) -> list[st.Golden]:
    return _committed_goldens() if store == STORE else st.iter_goldens(store)


def _program(golden: st.Golden) -> torch.export.ExportedProgram:
    return torch.export.load(str(golden.path("exported")))


def _qd_ops(program: torch.export.ExportedProgram) -> list[str]:
    """Names (``quantize_per_tensor``, ...) of the quantized_decomposed ops the graph calls."""
    return [
        n.target._schema.name.split("::")[1]
        for n in program.graph.nodes
        if isinstance(n.target, torch._ops.OpOverload) and n.target.namespace == QD
    ]


def _handled_ops(program: torch.export.ExportedProgram) -> dict[int, str]:
    """Debug handle -> the aten op carrying it (convert also copies a handle to the dequantize
    after its op; that one is left out)."""
    return {
        get_numeric_debug_handle(n): f"aten.{n.target._schema.name.split('::')[1]}"
        for n in program.graph.nodes
        if get_numeric_debug_handle(n) is not None and n.target.namespace == "aten"
    }


@pytest.mark.parametrize("case", CASE_NAMES)
def test_exported_golden_quantizes_with_quantized_decomposed_ops(case: str) -> None:
    ops = _qd_ops(_program(_golden(STORE, case)))
    # Every case quantizes something (an activation, or for dynamic linear the runtime-chosen
    # activation qparams) and dequantizes at least its weights.
    assert any(op.startswith("quantize_per_") for op in ops), ops
    assert any(op.startswith("dequantize_per_") for op in ops), ops


@pytest.mark.parametrize("case", CASE_NAMES)
def test_stored_graph_signature_is_that_of_the_stored_exported_program(case: str) -> None:
    golden = _golden(STORE, case)
    stored = golden.path("graph").read_text()
    assert signature(_program(golden)) == stored
    assert f"qdq: {QD}." in stored


@pytest.mark.parametrize("case", CASE_NAMES)
def test_intermediates_are_keyed_by_the_exported_programs_debug_handles(case: str) -> None:
    golden = _golden(STORE, case)
    handled = _handled_ops(_program(golden))
    stored = Intermediates.from_dict(torch.load(golden.path("intermediates"), weights_only=True))
    # one entry per handle, in topological order (handles were numbered on the float graph)
    assert stored.order == sorted(handled)
    assert stored.ops == handled
    assert all(isinstance(v, torch.Tensor) for v in stored.outputs.values())
    # the last handled op produces the model's output (after its output q/dq, if any)
    expected = torch.load(golden.path("expected"), weights_only=True)
    assert torch.equal(stored.outputs[stored.order[-1]], expected)


def _copy_golden(golden: st.Golden, store: Path) -> st.Golden:
    """A private copy of one golden (its folder and the blobs it references) in ``store``."""
    dest = store / golden.subject / golden.producer
    shutil.copytree(golden.dir, dest / golden.engine / golden.case)
    entries = [*golden.manifest.files.values()]
    entries += [e for cls in golden.manifest.class_files.values() for e in cls.values()]
    for entry in entries:
        if entry.path.startswith(f"{st.BLOBS}/"):
            (dest / entry.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(golden.producer_dir / entry.path, dest / entry.path)
    return _golden(store, golden.case)


def _lifted_tensor(program: torch.export.ExportedProgram, placeholder: str) -> torch.Tensor:
    """The buffer, parameter or constant tensor a placeholder of an exported graph stands for."""
    sig = program.graph_signature
    for mapping in (
        sig.inputs_to_buffers,
        sig.inputs_to_parameters,
        sig.inputs_to_lifted_tensor_constants,
    ):
        if placeholder in mapping:
            name = mapping[placeholder]
            return program.state_dict.get(name, program.constants.get(name))
    raise KeyError(placeholder)


def _replace_file(golden: st.Golden, fmt: str, path: Path) -> None:
    """Store ``path`` as the golden's ``fmt`` file and re-sign the manifest: the damage under
    test is to the numbers, not to the store's integrity (which would fail earlier)."""
    entry = st.add_file(golden.producer_dir, f"{golden.engine}/{golden.case}", path)
    manifest_path = golden.dir / st.MANIFEST
    data = json.loads(manifest_path.read_text())
    data["files"][fmt].update(entry.to_json())
    manifest_path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("conv", ["conv2d", "conv1d"])
def test_corrupted_conv_weight_is_named_as_the_first_divergent_op(
    tmp_path: Path, conv: str
) -> None:
    golden = _copy_golden(_golden(STORE, "pt2e_conv2d_conv1d"), tmp_path / "golden")
    program = _program(golden)
    node = next(n for n in program.graph.nodes if n.name == conv)
    handle = get_numeric_debug_handle(node)
    # conv(x, dequantize(int8 weight placeholder), ...): swap the int8 weight's output
    # channels, so values and qparams stay valid but land on the wrong channels
    weight = _lifted_tensor(program, node.args[1].args[0].name)
    assert weight.dtype == torch.int8
    weight.copy_(torch.flip(weight, dims=[0]))
    torch.export.save(program, str(tmp_path / "exported.pt2"))
    _replace_file(golden, "exported", tmp_path / "exported.pt2")

    with pytest.raises(GoldenFailure) as failure:
        run_check(CheckItem(_golden(tmp_path / "golden", golden.case), "exported"), Policy.load())

    message = str(failure.value)
    assert "load check" in message, message
    # ops before the corrupted one still agree with the golden's intermediates
    assert f"first divergent op: aten.{conv}, handle {handle}, SQNR " in message, message


def test_state_dict_check_requantizes_the_stored_float_model(tmp_path: Path) -> None:
    # The state_dict golden is the float model the flow started from; its load check runs
    # today's flow on it. Negating one stored float weight must therefore change the result,
    # while the reproduce check (float model rebuilt from the seed) still passes.
    golden = _copy_golden(_golden(STORE, "pt2e_conv2d_conv1d"), tmp_path / "golden")
    state = torch.load(golden.path("state_dict"), weights_only=True)
    state["float_model.conv1d.weight"] = -state["float_model.conv1d.weight"]
    torch.save(state, tmp_path / "state_dict.pt")
    _replace_file(golden, "state_dict", tmp_path / "state_dict.pt")
    golden = _golden(tmp_path / "golden", golden.case)

    run_check(CheckItem(golden, "expected"), Policy.load())
    with pytest.raises(GoldenFailure, match="load check: output differs"):
        run_check(CheckItem(golden, "state_dict"), Policy.load())
