"""QAT with conv-bn folding, node metadata hand-over, and quantizing a model twice."""

import pytest
import torch
from pt2e_models import ConvBnReLU2dAndLinearReLU, ConvWithBNRelu, LinearModel, export, symmetric

from harness.quant.pt2e import (
    SymmetricQuantizer,
    convert_pt2e,
    get_symmetric_quantization_config,
    move_exported_model_to_eval,
    prepare_pt2e,
    prepare_qat_pt2e,
)
from harness.quant.pt2e.graph_summary import contains_in_order, op_counts
from harness.quant.pt2e.graph_utils import get_debug_handle, get_debug_handle_location

qd = torch.ops.quantized_decomposed
aten = torch.ops.aten
Q, DQ = qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default
DQ_CH = qd.dequantize_per_channel.default


def test_qat_conv_bn_trains_then_folds_the_batch_norm_at_convert():
    inputs = (torch.randn(4, 3, 6, 6),)
    m = export(ConvWithBNRelu().train(), inputs)
    m = prepare_qat_pt2e(m, symmetric(is_per_channel=True, is_qat=True))
    # the batch norm still trains on batch statistics
    assert op_counts(m)[aten.batch_norm.default] == 1
    conv = next(n for n in m.graph.nodes if n.target == aten.conv2d.default)
    weight_fq = m.get_submodule(conv.args[1].target)
    assert hasattr(weight_fq, "activation_post_process")  # fake-quant, not a bare observer
    optimizer = torch.optim.SGD(m.parameters(), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        m(*inputs).sum().backward()
        optimizer.step()
    assert m.conv.weight.grad is not None and bool(m.conv.weight.grad.abs().sum() > 0)
    move_exported_model_to_eval(m)
    expected = m(*inputs)
    m = convert_pt2e(m)
    counts = op_counts(m)
    assert counts[aten.batch_norm.default] == 0
    assert (counts[Q], counts[DQ], counts[DQ_CH]) == (2, 2, 1)
    assert contains_in_order(m, [DQ, DQ_CH, aten.conv2d.default, aten.relu.default, Q, DQ])
    # Folding with running statistics reproduces the QAT model in eval mode up to int8
    # rounding differences of the folded weight: a few output steps.
    out_q = next(
        n for n in m.graph.nodes if n.target == Q and n.args[0].target == aten.relu.default
    )
    assert (m(*inputs) - expected).abs().max() <= 3 * out_q.args[1]


def _qat_then_convert(model, inputs, quantizer, steps=2):
    m = prepare_qat_pt2e(export(model.train(), inputs), quantizer)
    for _ in range(steps):
        m(*inputs)
    move_exported_model_to_eval(m)
    return m, convert_pt2e(m)


def test_qat_conv_transpose_bn_converts_to_dq_conv_transpose_q_without_batch_norm():
    # the repro: ConvTranspose2d(3, 4, 3) -> BatchNorm2d(4), QAT, per-tensor config
    inputs = (torch.randn(2, 3, 6, 6),)
    model = torch.nn.Sequential(torch.nn.ConvTranspose2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    _, m = _qat_then_convert(model, inputs, symmetric(is_qat=True), steps=1)
    counts = op_counts(m)
    assert counts[aten.batch_norm.default] == 0 and counts[aten.add_.Tensor] == 0
    assert contains_in_order(m, [DQ, aten.conv_transpose2d.input, Q, DQ])
    # inference no longer counts batches: nothing in the graph writes the model's state
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m(*inputs)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("per_channel", [False, True])
def test_qat_conv_transpose_bn_folds_into_the_weight_per_output_channel(groups, per_channel):
    # a transposed weight is [in, out/groups, k, k]: the batch norm of output channel
    # g * out/groups + j scales column j of group g's rows (axis 1 when groups == 1)
    inputs = (torch.randn(2, 4 if groups > 1 else 3, 5, 5),)
    model = ConvWithBNRelu(relu=False, transpose=True, channels=4, groups=groups)
    qat, m = _qat_then_convert(model, inputs, symmetric(is_per_channel=per_channel, is_qat=True))
    expected = qat(*inputs)
    assert op_counts(m)[aten.batch_norm.default] == 0
    # folding with running statistics is exact in float; the folded weight's int8 rounding
    # moves the output by a few steps at most (as for conv-bn above)
    out_q = next(n for n in m.graph.nodes if n.target == Q and n.args[0].op == "call_function")
    assert (m(*inputs) - expected).abs().max() <= 3 * out_q.args[1]


def test_quantizing_an_already_converted_submodule_again_keeps_both_rounds():
    torch.manual_seed(0)
    model = ConvBnReLU2dAndLinearReLU()
    inputs = (torch.randn(3, 3, 10, 10),)
    qat = symmetric(is_per_channel=True, is_qat=True)
    model.conv_bn_relu = prepare_qat_pt2e(export(model.conv_bn_relu, inputs), qat)
    model(*inputs)
    model.conv_bn_relu = convert_pt2e(model.conv_bn_relu)

    linear_only = SymmetricQuantizer().set_module_type(
        torch.nn.Linear, get_symmetric_quantization_config(is_per_channel=False)
    )
    m = prepare_pt2e(export(model, inputs), linear_only)
    m(*inputs)
    m = convert_pt2e(m)
    counts = op_counts(m)
    # round 1: conv input + relu output (q and dq), conv weight (dq per channel);
    # round 2: linear input + output (q and dq), linear weight (dq per tensor).
    assert (counts[Q], counts[DQ], counts[DQ_CH]) == (4, 5, 1)
    assert contains_in_order(
        m,
        [DQ, aten.conv2d.default, aten.relu.default, Q, DQ, aten.linear.default, Q],
    )


def _tag(node, handle):
    custom_key, handle_key = get_debug_handle_location()
    node.meta.setdefault(custom_key, {})[handle_key] = handle


def test_observer_and_dequantize_nodes_inherit_the_numeric_debug_handle():
    inputs = (torch.randn(2, 2),)
    m = export(LinearModel().eval(), inputs)
    linear = next(n for n in m.graph.nodes if n.target == aten.linear.default)
    _tag(linear, 7)
    m = prepare_pt2e(m, symmetric())
    linear = next(n for n in m.graph.nodes if n.target == aten.linear.default)
    observer = next(iter(linear.users))
    assert observer.op == "call_module" and get_debug_handle(observer) == 7
    m(*inputs)
    m = convert_pt2e(m)
    linear = next(n for n in m.graph.nodes if n.target == aten.linear.default)
    q = next(iter(linear.users))
    dq = next(iter(q.users))
    assert dq.target == DQ and get_debug_handle(dq) == 7


def test_preparing_and_converting_a_converted_graph_again_requantizes_its_values():
    inputs = (torch.randn(2, 2),)
    m = convert_pt2e(
        _calibrated(prepare_pt2e(export(LinearModel().eval(), inputs), symmetric()), inputs)
    )
    first = m(*inputs)
    again = convert_pt2e(_calibrated(prepare_pt2e(m, symmetric()), inputs))
    counts = op_counts(again)
    # each activation gets a second q/dq pair; the weight's dequantize -> quantize chain is
    # constant and folds into a new int8 constant, so the weight still has one dequantize
    assert (counts[Q], counts[DQ]) == (4, 5)
    weight_dq = next(n for n in again.graph.nodes if n.target == DQ and n.args[0].op == "get_attr")
    assert getattr(again, weight_dq.args[0].target).dtype == torch.int8
    # Re-quantizing moves the input by at most half a step of its new grid (which the 2x2
    # linear scales by its small weights) and the output by at most half an output step:
    # well within two output steps, while a miswired graph would be off by far more.
    out_scale = next(iter(again.graph.find_nodes(op="output"))).args[0][0].args[0].args[1]
    assert (again(*inputs) - first).abs().max() <= 2 * out_scale


def _calibrated(m, inputs):
    m(*inputs)
    return m
