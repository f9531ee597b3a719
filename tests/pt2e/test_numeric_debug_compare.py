"""Numeric debugger: output loggers, per-handle comparison, golden intermediates, first divergence."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from pt2e_models import Conv2dThenConv1d

from harness.compat import expected_torch_deprecations
from harness.quant.pt2e import (
    SymmetricQuantizer,
    convert_pt2e,
    get_symmetric_quantization_config,
    prepare_pt2e,
)
from harness.quant.pt2e.graph_utils import fetch_attr
from harness.quant.pt2e.numeric_debugger import (
    Divergence,
    Intermediates,
    NodeOutputs,
    OutputLogger,
    compare_results,
    compute_intermediates,
    cosine_similarity,
    describe_first_divergence,
    extract_results_from_loggers,
    find_first_divergence,
    first_divergent_op,
    format_comparison,
    generate_numeric_debug_handle,
    get_numeric_debug_handle,
    l2_error,
    prepare_for_propagation_comparison,
    program_intermediates,
    sqnr,
)


class Conv2dWithSplit(torch.nn.Module):
    """conv2d -> split (a two-tensor output) -> add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.conv(x), 3, dim=1)
        return a + b

    @staticmethod
    def example_inputs() -> tuple[torch.Tensor, ...]:
        return (torch.randn(1, 3, 5, 5),)


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def _float_module(model_cls: type) -> torch.fx.GraphModule:
    """Export, give every op a handle, unlift: the float graph both sides derive from."""
    model = model_cls()
    ep = torch.export.export(model, model.example_inputs(), strict=False)
    generate_numeric_debug_handle(ep)
    return ep.module()


def _quantize(gm: torch.fx.GraphModule, example_inputs: tuple) -> torch.fx.GraphModule:
    quantizer = SymmetricQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=False)
    )
    gm = prepare_pt2e(gm, quantizer)
    gm(*example_inputs)
    return convert_pt2e(gm)


def _loggers(model: torch.nn.Module) -> list[OutputLogger]:
    return [m for m in model.modules() if isinstance(m, OutputLogger)]


def _outputs(handle: int, *values: object, name: str = "n") -> NodeOutputs:
    return NodeOutputs(handle, name, "aten.op", None, list(values))


@pytest.fixture(scope="module")
def float_and_quantized() -> tuple[torch.fx.GraphModule, torch.fx.GraphModule, tuple]:
    """Conv2dThenConv1d as a float graph with handles and its per-tensor int8 quantization.

    Module-scoped because export + prepare + convert dominate the runtime; tests never modify
    these (every helper under test works on a copy).
    """
    torch.manual_seed(0)
    example_inputs = Conv2dThenConv1d.example_inputs()
    float_gm = _float_module(Conv2dThenConv1d)
    quant_gm = _quantize(_deepcopy(float_gm), example_inputs)
    return float_gm, quant_gm, example_inputs


def _deepcopy(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    with expected_torch_deprecations():
        return copy.deepcopy(gm)


# ---------------------------------------------------------------------------------------------
# Loggers
# ---------------------------------------------------------------------------------------------


def test_one_logger_per_handled_op_and_outputs_unchanged(float_and_quantized) -> None:
    float_gm, _, example_inputs = float_and_quantized
    logged = prepare_for_propagation_comparison(float_gm)
    loggers = _loggers(logged)
    # conv2d, squeeze, conv1d
    assert sorted(lg.node_name for lg in loggers) == ["conv1d", "conv2d", "squeeze"]
    assert torch.equal(logged(*example_inputs), float_gm(*example_inputs))


def test_prepare_for_propagation_comparison_leaves_the_model_alone(float_and_quantized) -> None:
    float_gm, _, _ = float_and_quantized
    before = [n.name for n in float_gm.graph.nodes]
    prepare_for_propagation_comparison(float_gm)
    assert [n.name for n in float_gm.graph.nodes] == before
    assert not _loggers(float_gm)


def test_prepare_for_propagation_comparison_accepts_an_exported_program() -> None:
    model = Conv2dThenConv1d()
    ep = torch.export.export(model, model.example_inputs(), strict=False)
    generate_numeric_debug_handle(ep)
    assert len(_loggers(prepare_for_propagation_comparison(ep))) == 3


def test_graph_without_handles_is_refused_with_a_clear_error() -> None:
    model = Conv2dThenConv1d()
    gm = torch.export.export(model, model.example_inputs(), strict=False).module()
    with pytest.raises(
        ValueError, match=r"no numeric debug handles.*generate_numeric_debug_handle"
    ):
        prepare_for_propagation_comparison(gm)


def test_logger_records_one_detached_copy_per_call(float_and_quantized) -> None:
    float_gm, _, (x,) = float_and_quantized
    logged = prepare_for_propagation_comparison(float_gm)
    logged(x)
    logged(2 * x)
    (conv2d_logger,) = (lg for lg in _loggers(logged) if lg.node_name == "conv2d")
    assert len(conv2d_logger.stats) == 2
    first, second = conv2d_logger.stats
    assert not first.requires_grad
    # conv2d(2x) = 2 conv2d(x) - bias, so the two records differ: each call was kept apart.
    assert not torch.equal(first, second)


def test_logger_records_list_outputs_as_lists() -> None:
    gm = _float_module(Conv2dWithSplit)
    logged = prepare_for_propagation_comparison(gm)
    logged(*Conv2dWithSplit.example_inputs())
    results = extract_results_from_loggers(logged)
    split = next(r for r in results.values() if r.op_name == "aten.split")
    (record,) = split.outputs
    assert isinstance(record, list)
    assert [t.shape[1] for t in record] == [3, 3]


def test_ops_without_tensor_output_are_left_out_of_the_results() -> None:
    # Exports contain ops that return None (torch 2.13 adds aten._assert_tensor_metadata for every
    # .to(dtype)); an inserted torch._assert stands for them on every torch release.
    x = (torch.randn(2, 3),)
    ep = torch.export.export(Doubler(), x, strict=False)
    mul = next(n for n in ep.graph.nodes if n.op == "call_function")
    with ep.graph.inserting_after(mul):
        ep.graph.call_function(torch._assert, (True, "always holds"))
    ep.graph_module.recompile()
    generate_numeric_debug_handle(ep)
    gm = ep.module()
    logged = prepare_for_propagation_comparison(gm)
    logged(*x)
    assert len(_loggers(logged)) == 2  # the op and the assertion both have a handle
    results = extract_results_from_loggers(logged)
    assert [r.op_name for r in results.values()] == ["aten.mul"]
    assert list(compute_intermediates(gm, x).ops.values()) == ["aten.mul"]


def test_non_tensor_elements_of_list_outputs_must_agree() -> None:
    same = compare_results(
        {1: _outputs(1, [torch.ones(2), 3])}, {1: _outputs(1, [torch.ones(2), 3])}
    )
    assert same[1].results[0].sqnr == [math.inf]
    with pytest.raises(ValueError, match=r"handle 1 .*ref 3 vs actual 4"):
        compare_results({1: _outputs(1, [torch.ones(2), 3])}, {1: _outputs(1, [torch.ones(2), 4])})


# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------


def test_extract_results_are_keyed_by_handle_in_graph_order(float_and_quantized) -> None:
    float_gm, _, example_inputs = float_and_quantized
    logged = prepare_for_propagation_comparison(float_gm)
    logged(*example_inputs)
    results = extract_results_from_loggers(logged)
    handles = {n.name: get_numeric_debug_handle(n) for n in float_gm.graph.nodes}
    assert list(results) == [handles["conv2d"], handles["squeeze"], handles["conv1d"]]
    assert [r.op_name for r in results.values()] == ["aten.conv2d", "aten.squeeze", "aten.conv1d"]


def test_after_convert_the_dequantize_node_represents_the_handle(float_and_quantized) -> None:
    _, quant_gm, example_inputs = float_and_quantized
    logged = prepare_for_propagation_comparison(quant_gm)
    logged(*example_inputs)
    results = extract_results_from_loggers(logged)
    # The recorded value is the dequantized output (what the next op reads), and the op name is
    # still the float op's.
    assert all(r.node_name.startswith("dequantize_per_tensor") for r in results.values())
    assert [r.op_name for r in results.values()] == ["aten.conv2d", "aten.squeeze", "aten.conv1d"]


def test_extract_from_a_model_without_loggers_is_an_error(float_and_quantized) -> None:
    float_gm, _, _ = float_and_quantized
    with pytest.raises(ValueError, match="no OutputLogger"):
        extract_results_from_loggers(float_gm)


def test_extract_before_running_the_model_is_an_error(float_and_quantized) -> None:
    float_gm, _, _ = float_and_quantized
    with pytest.raises(ValueError, match="recorded nothing"):
        extract_results_from_loggers(prepare_for_propagation_comparison(float_gm))


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def test_sqnr_l2_and_cosine_follow_their_definitions() -> None:
    ref = torch.tensor([30.0, 40.0])  # ||ref|| = 50
    actual = torch.tensor([30.0, 40.5])  # ||ref - actual|| = 0.5 (all exact in float32)
    assert sqnr(ref, actual) == pytest.approx(20 * math.log10(50 / 0.5))  # 40 dB
    assert l2_error(ref, actual) == pytest.approx(0.5 / 50)
    expected_cos = (900 + 40 * 40.5) / (50 * math.hypot(30, 40.5))
    assert cosine_similarity(ref, actual) == pytest.approx(expected_cos)


def test_metrics_of_identical_tensors() -> None:
    x = torch.tensor([1.0, -2.0])
    assert sqnr(x, x) == math.inf
    assert l2_error(x, x) == 0.0
    assert cosine_similarity(x, x) == pytest.approx(1.0)


def test_metrics_against_an_all_zero_reference() -> None:
    zero, x = torch.zeros(2), torch.tensor([1.0, 0.0])
    assert sqnr(zero, x) == -math.inf
    assert l2_error(zero, x) == math.inf
    assert cosine_similarity(zero, x) == 0.0
    assert cosine_similarity(zero, zero) == 1.0


def test_a_nan_or_inf_on_one_side_only_is_total_divergence() -> None:
    ref = torch.tensor([1.0, 2.0])
    for bad in (float("nan"), float("inf")):
        actual = torch.tensor([1.0, bad])
        assert sqnr(ref, actual) == -math.inf
        assert l2_error(ref, actual) == math.inf
    assert find_first_divergence({1: ref}, {1: torch.tensor([1.0, float("nan")])}) is not None


def test_the_same_nan_or_inf_on_both_sides_is_agreement() -> None:
    x = torch.tensor([1.0, float("nan"), float("inf")])
    assert sqnr(x, x.clone()) == math.inf
    assert l2_error(x, x.clone()) == 0.0


# ---------------------------------------------------------------------------------------------
# compare_results
# ---------------------------------------------------------------------------------------------


def test_comparing_a_model_with_itself_is_lossless(float_and_quantized) -> None:
    float_gm, _, example_inputs = float_and_quantized
    a, b = (prepare_for_propagation_comparison(float_gm) for _ in range(2))
    a(*example_inputs)
    b(*example_inputs)
    summary = compare_results(extract_results_from_loggers(a), extract_results_from_loggers(b))
    assert len(summary) == 3
    for node in summary.values():
        (result,) = node.results
        assert result.sqnr == math.inf
        assert result.l2_error == 0.0
        assert result.cosine_similarity == pytest.approx(1.0)


def test_per_tensor_int8_conv2d_conv1d_keeps_35db_sqnr_at_every_op(float_and_quantized) -> None:
    # 8-bit per-tensor symmetric quantization leaves ~6 dB/bit * 8 bits minus the crest factor of
    # these small activations: > 35 dB for each of conv2d, squeeze and conv1d.
    float_gm, quant_gm, example_inputs = float_and_quantized
    ref, actual = (prepare_for_propagation_comparison(m) for m in (float_gm, quant_gm))
    ref(*example_inputs)
    actual(*example_inputs)
    summary = compare_results(
        extract_results_from_loggers(ref), extract_results_from_loggers(actual)
    )
    assert len(summary) == 3
    for node in summary.values():
        assert node.results[0].sqnr >= 35, (node.op_name, node.results[0].sqnr)
        assert node.results[0].sqnr < math.inf  # quantization did change the values


def test_format_comparison_has_one_row_per_handle(float_and_quantized) -> None:
    float_gm, quant_gm, example_inputs = float_and_quantized
    ref, actual = (prepare_for_propagation_comparison(m) for m in (float_gm, quant_gm))
    ref(*example_inputs)
    actual(*example_inputs)
    summary = compare_results(
        extract_results_from_loggers(ref), extract_results_from_loggers(actual)
    )
    header, *rows = format_comparison(summary).splitlines()
    assert header.split()[:2] == ["handle", "op"]
    assert [row.split()[:2] for row in rows] == [[str(h), s.op_name] for h, s in summary.items()]
    assert f"{summary[1].results[0].sqnr:.1f}" in rows[0]


def test_list_outputs_are_compared_element_by_element() -> None:
    torch.manual_seed(0)
    example_inputs = Conv2dWithSplit.example_inputs()
    float_gm = _float_module(Conv2dWithSplit)
    ref = prepare_for_propagation_comparison(float_gm)
    actual = prepare_for_propagation_comparison(_quantize(_deepcopy(float_gm), example_inputs))
    ref(*example_inputs)
    actual(*example_inputs)
    summary = compare_results(
        extract_results_from_loggers(ref), extract_results_from_loggers(actual)
    )
    split = next(s for s in summary.values() if s.op_name == "aten.split")
    sqnrs = split.results[0].sqnr
    assert isinstance(sqnrs, list) and len(sqnrs) == 2
    assert all(35 <= v < math.inf for v in sqnrs), sqnrs
    assert isinstance(split.results[0].cosine_similarity, list)
    assert split.results[0].min_sqnr == min(sqnrs)


def test_compare_with_no_results_is_an_error() -> None:
    with pytest.raises(ValueError, match="no numeric debug handles"):
        compare_results({}, {1: _outputs(1, torch.ones(2))})
    with pytest.raises(ValueError, match="no numeric debug handles"):
        compare_results({1: _outputs(1, torch.ones(2))}, {})


def test_compare_with_no_common_handle_is_an_error() -> None:
    with pytest.raises(ValueError, match="share no debug handle"):
        compare_results({1: _outputs(1, torch.ones(2))}, {2: _outputs(2, torch.ones(2))})


def test_compare_skips_handles_present_on_one_side_only() -> None:
    ref = {1: _outputs(1, torch.ones(2)), 2: _outputs(2, torch.ones(2))}
    actual = {1: _outputs(1, torch.ones(2)), 3: _outputs(3, torch.ones(2))}
    assert list(compare_results(ref, actual)) == [1]


def test_compare_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"handle 1 .*shapes differ"):
        compare_results({1: _outputs(1, torch.ones(2))}, {1: _outputs(1, torch.ones(3))})


# ---------------------------------------------------------------------------------------------
# Golden intermediates and the first divergent op
# ---------------------------------------------------------------------------------------------


def test_compute_intermediates_gives_every_handle_in_topological_order(float_and_quantized) -> None:
    float_gm, _, example_inputs = float_and_quantized
    inter = compute_intermediates(float_gm, example_inputs)
    assert inter.order == sorted(inter.order)  # fresh handles are assigned in graph order
    assert list(inter.ops.values()) == ["aten.conv2d", "aten.squeeze", "aten.conv1d"]
    assert torch.equal(inter.outputs[inter.order[-1]], float_gm(*example_inputs))


def test_intermediates_round_trip_through_safetensors(tmp_path) -> None:
    from safetensors.torch import load_file, safe_open, save_file

    gm = _float_module(Conv2dWithSplit)
    inter = compute_intermediates(gm, Conv2dWithSplit.example_inputs())
    tensors, metadata = inter.to_flat()
    path = tmp_path / "intermediates.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    with safe_open(str(path), framework="pt") as f:
        loaded_meta = f.metadata()
    back = Intermediates.from_flat(load_file(str(path)), loaded_meta)
    assert back.order == inter.order
    assert back.ops == inter.ops
    # an infinite threshold only passes bit-identical values
    assert first_divergent_op(inter, back, sqnr_threshold_db=math.inf) is None


def test_intermediates_round_trip_through_torch_save_with_weights_only(tmp_path) -> None:
    gm = _float_module(Conv2dWithSplit)
    inter = compute_intermediates(gm, Conv2dWithSplit.example_inputs())
    path = tmp_path / "intermediates.pt"
    torch.save(inter.to_dict(), path)
    back = Intermediates.from_dict(torch.load(path, weights_only=True))
    assert back.order == inter.order
    assert back.ops == inter.ops
    assert first_divergent_op(inter, back, sqnr_threshold_db=math.inf) is None


def test_first_divergent_op_accepts_dicts_and_bare_handle_maps() -> None:
    golden = Intermediates(outputs={1: torch.ones(2), 2: torch.ones(2)}, ops={1: "a", 2: "aten.b"})
    bare_today = {"1": torch.ones(2), "2": torch.zeros(2)}  # handles as strings, as stored
    found = first_divergent_op(golden.to_dict(), bare_today)
    assert (found.handle, found.op_name) == (2, "aten.b")


def test_from_dict_refuses_other_mappings() -> None:
    with pytest.raises(ValueError, match="not an Intermediates"):
        Intermediates.from_dict({"1": torch.ones(1)})


def test_same_model_has_no_divergent_op(float_and_quantized) -> None:
    _, quant_gm, example_inputs = float_and_quantized
    golden = compute_intermediates(quant_gm, example_inputs)
    today = compute_intermediates(quant_gm, example_inputs)
    assert first_divergent_op(golden, today) is None


def test_quantized_model_saved_as_pt2_reproduces_its_intermediates(
    float_and_quantized, tmp_path
) -> None:
    # The harness's "exported" golden: the converted graph re-exported and saved; the reloaded
    # program still carries every handle, so its intermediates can be compared with the golden's.
    _, quant_gm, example_inputs = float_and_quantized
    golden = compute_intermediates(quant_gm, example_inputs)
    path = tmp_path / "exported.pt2"
    torch.export.save(torch.export.export(quant_gm, example_inputs, strict=False), str(path))
    reloaded = torch.export.load(str(path)).module()
    today = compute_intermediates(reloaded, example_inputs)
    assert today.ops == golden.ops
    assert first_divergent_op(golden, today, sqnr_threshold_db=math.inf) is None


@pytest.mark.parametrize(
    ("corrupted_op", "weight_of"),
    [("aten.conv1d", "conv1d"), ("aten.conv2d", "conv2d")],
)
def test_corrupted_weight_is_localized_to_its_op(
    float_and_quantized, corrupted_op: str, weight_of: str
) -> None:
    _, quant_gm, example_inputs = float_and_quantized
    golden = compute_intermediates(quant_gm, example_inputs)

    today_gm = _deepcopy(quant_gm)
    conv = next(n for n in today_gm.graph.nodes if n.name == weight_of)
    # the weight arrives through a dequantize of a folded int8 constant
    weight_q = fetch_attr(today_gm, str(conv.args[1].args[0].target))
    with torch.no_grad():
        weight_q.copy_(
            torch.flip(weight_q, dims=[0])
        )  # swap output channels: same values, wrong place
    today = compute_intermediates(today_gm, example_inputs)

    found = first_divergent_op(golden, today)
    assert found is not None
    assert found.op_name == corrupted_op
    assert found.handle == get_numeric_debug_handle(conv)
    assert str(found).startswith(
        f"first divergent op: {corrupted_op}, handle {found.handle}, SQNR "
    )
    assert str(found).endswith(" dB")


def test_first_divergence_follows_the_given_order() -> None:
    golden = {1: torch.ones(4), 2: torch.ones(4)}
    today = {1: torch.zeros(4), 2: torch.zeros(4)}
    names = {1: "aten.a", 2: "aten.b"}
    assert find_first_divergence(golden, today, names).handle == 1
    assert find_first_divergence(golden, today, names, order=[2, 1]).handle == 2


def test_first_divergence_uses_the_threshold() -> None:
    golden = {1: torch.tensor([30.0, 40.0])}
    today = {1: torch.tensor([30.0, 40.5])}  # 20 * log10(50 / 0.5) = 40 dB
    assert find_first_divergence(golden, today, sqnr_threshold_db=39.0) is None
    found = find_first_divergence(golden, today, {1: "aten.x"}, sqnr_threshold_db=41.0)
    assert found == Divergence(1, "aten.x", pytest.approx(40.0))
    assert str(found) == "first divergent op: aten.x, handle 1, SQNR 40.0 dB"


def test_a_handle_missing_today_is_divergent() -> None:
    found = find_first_divergence({1: torch.ones(2), 2: torch.ones(2)}, {2: torch.ones(2)})
    assert found is not None and found.handle == 1
    assert found.sqnr_db == -math.inf
    assert "missing" in str(found)


def test_a_shape_change_is_divergent() -> None:
    found = find_first_divergence({1: torch.ones(2)}, {1: torch.ones(3)}, {1: "aten.x"})
    assert found is not None and found.sqnr_db == -math.inf
    assert "shapes differ" in str(found)


def test_list_output_diverges_when_any_element_does() -> None:
    golden = {1: [torch.ones(2), torch.ones(2)]}
    today = {1: [torch.ones(2), torch.zeros(2)]}
    assert find_first_divergence(golden, today).handle == 1


def test_first_divergence_without_intermediates_is_an_error() -> None:
    with pytest.raises(ValueError, match="no numeric debug handles"):
        find_first_divergence({}, {1: torch.ones(1)})
    with pytest.raises(ValueError, match="no numeric debug handles"):
        find_first_divergence({1: torch.ones(1)}, {})


# ---------------------------------------------------------------------------------------------
# Harness hooks
# ---------------------------------------------------------------------------------------------


def test_program_intermediates_of_a_quantized_program_keep_the_float_op_names(
    float_and_quantized,
) -> None:
    _, quant_gm, example_inputs = float_and_quantized
    program = torch.export.export(quant_gm, example_inputs, strict=False)
    stored = program_intermediates(program, example_inputs)
    assert Intermediates.from_dict(stored).ops == {
        1: "aten.conv2d",
        2: "aten.squeeze",
        3: "aten.conv1d",
    }


def test_program_intermediates_without_handles_are_deterministic_and_leave_the_graph_alone() -> (
    None
):
    model = Conv2dThenConv1d()
    example_inputs = model.example_inputs()
    gm = torch.export.export(model, example_inputs, strict=False).module()
    first = program_intermediates(gm, example_inputs)
    second = program_intermediates(gm, example_inputs)
    assert first["ops"] == second["ops"]
    assert first_divergent_op(first, second, sqnr_threshold_db=math.inf) is None
    assert all(get_numeric_debug_handle(n) is None for n in gm.graph.nodes)


def test_describe_first_divergence_is_one_line_or_none() -> None:
    golden = Intermediates(outputs={3: torch.ones(4)}, ops={3: "aten.conv1d"})
    assert describe_first_divergence(golden, golden) is None
    # today = 1.25 * golden: noise/signal = 0.25 -> 20*log10(4) = 12.04 dB
    today = Intermediates(outputs={3: torch.full((4,), 1.25)}, ops={3: "aten.conv1d"})
    assert describe_first_divergence(golden, today) == (
        "first divergent op: aten.conv1d, handle 3, SQNR 12.0 dB"
    )
