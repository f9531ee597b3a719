"""Post-training quantization: prepare -> calibrate -> convert on exported graphs."""

import warnings

import pytest
import torch
from pt2e_models import (
    ConvBnReluPoolLinear,
    ConvWithBNRelu,
    LinearModel,
    export,
    quantize,
    symmetric,
)

from harness.quant import observers
from harness.quant import primitives as P
from harness.quant.pt2e import (
    OP_TO_ANNOTATOR,
    ComposableQuantizer,
    DerivedQuantizationSpec,
    QuantizationAnnotation,
    QuantizationConfig,
    QuantizationSpec,
    Quantizer,
    SymmetricQuantizer,
    UncalibratedObserverWarning,
    convert_pt2e,
    get_symmetric_quantization_config,
    prepare_pt2e,
)
from harness.quant.pt2e.constant_fold import VALUE_META_KEYS
from harness.quant.pt2e.graph_summary import contains_in_order, op_counts

qd = torch.ops.quantized_decomposed
aten = torch.ops.aten
Q, DQ = qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default
DQ_CH = qd.dequantize_per_channel.default
LINEAR = aten.linear.default
LINEAR_IN = (torch.randn(2, 2),)


@pytest.fixture(scope="module")
def quantized_linear():
    torch.manual_seed(0)
    model = LinearModel().eval()
    return model, quantize(model, symmetric(), LINEAR_IN)


def test_weight_quantize_is_folded_into_an_int8_constant(quantized_linear):
    _, m = quantized_linear
    counts = op_counts(m)
    # input and output are quantized at run time; the weight only needs its dequantize.
    assert (counts[Q], counts[DQ]) == (2, 3)
    weight_dq = next(n for n in m.graph.nodes if n.target == DQ and n.args[0].op == "get_attr")
    assert getattr(m, weight_dq.args[0].target).dtype == torch.int8


def test_per_channel_weight_quantize_is_folded():
    m = quantize(LinearModel().eval(), symmetric(is_per_channel=True), LINEAR_IN)
    counts = op_counts(m)
    assert (counts[Q], counts[DQ], counts[DQ_CH]) == (2, 2, 1)
    assert counts[qd.quantize_per_channel.default] == 0


def test_convert_without_folding_keeps_the_weight_quantize_op():
    m = quantize(LinearModel().eval(), symmetric(), LINEAR_IN, fold_quantize=False)
    assert op_counts(m)[Q] == 3


def test_converted_linear_computes_dequantized_integer_arithmetic(quantized_linear):
    """The converted graph is exactly: fake-quantize x with the input qparams, the weight with
    the weight qparams, run the float linear, fake-quantize the result with the output qparams."""
    model, m = quantized_linear
    x = LINEAR_IN[0]
    q_in, q_out = (n for n in m.graph.nodes if n.target == Q)
    w_dq = next(n for n in m.graph.nodes if n.target == DQ and n.args[0].op == "get_attr")

    def fq(t, node):
        _, s, z, lo, hi, _ = node.args
        return P.fake_quantize_kernel(t, torch.tensor(s), torch.tensor(z), lo, hi)

    w_int = getattr(m, w_dq.args[0].target)
    w = P.dequantize_kernel(w_int, torch.tensor(w_dq.args[1]), torch.tensor(w_dq.args[2]))
    expected = fq(torch.nn.functional.linear(fq(x, q_in), w, model.linear.bias), q_out)
    torch.testing.assert_close(m(x), expected, rtol=0, atol=0)


def test_constants_unrelated_to_quantization_are_not_folded():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)
            self.dont_fold_me = torch.nn.Parameter(torch.randn(2, 2))

        def forward(self, x):
            return self.linear(x) + self.dont_fold_me.t()

    quantizer = SymmetricQuantizer().set_module_type(
        torch.nn.Linear, get_symmetric_quantization_config()
    )
    m = quantize(M().eval(), quantizer, LINEAR_IN)
    counts = op_counts(m)
    assert (counts[Q], counts[DQ], counts[aten.t.default]) == (2, 3, 1)


def test_every_constant_op_before_a_weight_quantize_is_folded():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("weight", torch.randn(2, 2))

        def forward(self, x):
            return torch.nn.functional.linear(x, self.weight.t())

    m = quantize(M().eval(), symmetric(), LINEAR_IN)
    counts = op_counts(m)
    assert (counts[Q], counts[DQ], counts[aten.t.default]) == (2, 3, 0)


def test_folded_weight_constant_keeps_the_weight_node_metadata():
    gm = export(LinearModel().eval(), LINEAR_IN)
    weight = next(n for n in gm.graph.nodes if n.op == "get_attr" and n.target.endswith("weight"))
    weight_meta = dict(weight.meta)
    gm = prepare_pt2e(gm, symmetric())
    gm(*LINEAR_IN)
    gm = convert_pt2e(gm)
    folded = next(n for n in gm.graph.nodes if n.op == "get_attr" and "frozen_param" in n.target)
    for key, value in weight_meta.items():
        if key in VALUE_META_KEYS:
            continue  # describes the float weight; the constant is int8
        assert folded.meta[key] == value, key
    assert folded.meta["val"].dtype == torch.int8


def test_annotating_a_constant_argument_is_an_error_naming_the_node():
    class M(torch.nn.Module):
        def forward(self, x):
            return x + 6

    class AnnotatesTheConstant(Quantizer):
        def annotate(self, model):
            act = QuantizationSpec(
                dtype=torch.uint8,
                quant_min=0,
                quant_max=255,
                qscheme=torch.per_tensor_affine,
                observer_or_fake_quant_ctr=observers.MinMaxObserver,
            )
            for node in model.graph.nodes:
                if node.target == aten.add.Tensor:
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={node.args[0]: act, node.args[1]: act},
                        output_qspec=act,
                        _annotated=True,
                    )
            return model

    gm = export(M(), (torch.randn(1, 2, 3, 3),))
    with pytest.raises(ValueError, match=r"node 'add'.*annotates 6, which is not an input node"):
        prepare_pt2e(gm, AnnotatesTheConstant())


def test_prepare_rejects_a_model_that_was_not_exported():
    with pytest.raises(
        TypeError, match=r"prepare_pt2e: model must be an exported graph.*LinearModel"
    ):
        prepare_pt2e(LinearModel(), symmetric())
    traced = torch.fx.symbolic_trace(LinearModel())
    with pytest.raises(TypeError, match="symbolic_trace graph has no export metadata"):
        prepare_pt2e(traced, symmetric())


def test_prepare_rejects_something_that_is_not_a_quantizer():
    gm = export(LinearModel(), LINEAR_IN)
    with pytest.raises(TypeError, match=r"quantizer must be a harness\.quant\.pt2e\.Quantizer"):
        prepare_pt2e(gm, object())


class _AddToMul(Quantizer):
    def transform_for_annotation(self, model):
        for n in model.graph.nodes:
            if n.target == aten.add.Tensor:
                n.target = aten.mul.Tensor
        return model

    def annotate(self, model):
        return model


class _SubToDiv(Quantizer):
    def transform_for_annotation(self, model):
        for n in model.graph.nodes:
            if n.target == aten.sub.Tensor:
                n.target = aten.div.Tensor
        return model

    def annotate(self, model):
        return model


def test_transform_for_annotation_rewrites_the_graph_before_annotation():
    class M(torch.nn.Module):
        def forward(self, x):
            return x + 3

    x = torch.randn(1, 2, 3, 3)
    m = prepare_pt2e(export(M(), (x,)), _AddToMul())
    counts = op_counts(m)
    assert (counts[aten.add.Tensor], counts[aten.mul.Tensor]) == (0, 1)
    torch.testing.assert_close(m(x), x * 3)


def test_composable_quantizer_applies_every_transform():
    class M(torch.nn.Module):
        def forward(self, x, y, z):
            return x + y - z

    inputs = tuple(torch.randn(1, 2, 3, 3) for _ in range(3))
    m = prepare_pt2e(export(M(), inputs), ComposableQuantizer([_AddToMul(), _SubToDiv()]))
    m(*inputs)
    counts = op_counts(m)
    assert [counts[t] for t in (aten.add.Tensor, aten.sub.Tensor)] == [0, 0]
    assert [counts[t] for t in (aten.mul.Tensor, aten.div.Tensor)] == [1, 1]


def test_a_node_whose_output_observer_was_removed_still_converts():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3)

        def forward(self, x):
            x = self.conv(x)
            return x, x + 1

    inputs = (torch.randn(1, 3, 5, 5),)
    m = prepare_pt2e(export(M(), inputs), symmetric())
    m(*inputs)
    output = next(n for n in m.graph.nodes if n.op == "output")
    observer = output.args[0][0]
    assert observer.op == "call_module" and observer.target.startswith("activation_post_process_")
    observer.replace_all_uses_with(observer.args[0])
    m.graph.erase_node(observer)
    m.recompile()
    m = convert_pt2e(m)
    conv_out, plus_one = m(*inputs)
    assert conv_out.shape == (1, 3, 3, 3)
    # the conv output reaches the graph output unquantized: no dequantize right before it
    assert (
        next(n for n in m.graph.nodes if n.op == "output").args[0][0].target == aten.conv2d.default
    )
    torch.testing.assert_close(plus_one, conv_out + 1, atol=0.05, rtol=0)


def test_grouped_conv_is_quantized_per_output_channel():
    inputs = (torch.randn(2, 4, 10, 10),)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=2)).eval()
    m = quantize(model, symmetric(is_per_channel=True), inputs)
    dq = next(n for n in m.graph.nodes if n.target == DQ_CH)
    # 4 output channels -> 4 scales along axis 0 of the [4, 2, 3, 3] weight.
    assert getattr(m, dq.args[1].target).shape == (4,) and dq.args[3] == 0
    assert m(*inputs).shape == (2, 4, 8, 8)


def test_ptq_folds_batch_norm_into_a_transposed_conv():
    int8 = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_tensor_symmetric,
        observer_or_fake_quant_ctr=observers.MinMaxObserver,
    )
    config = QuantizationConfig(int8, int8, int8, None)

    class ConvTransposeRelu(Quantizer):
        def annotate(self, model):
            OP_TO_ANNOTATOR["conv_transpose_relu"](model, config)
            return model

    inputs = (torch.randn(1, 3, 5, 5),)
    model = ConvWithBNRelu(transpose=True).eval()
    m = quantize(model, ConvTransposeRelu(), inputs)
    counts = op_counts(m)
    # input: q + dq; weight: dq (folded); relu output: q + dq; the batch norm is gone.
    assert (counts[Q], counts[DQ], counts[aten.batch_norm.default]) == (2, 3, 0)
    assert contains_in_order(m, [DQ, DQ, aten.conv_transpose2d.input, aten.relu.default, Q])
    # folding is exact in float; what remains is int8 rounding (a few output steps)
    out_scale = next(
        n for n in m.graph.nodes if n.target == Q and n.args[0].target == aten.relu.default
    ).args[1]
    assert (m(*inputs) - model(*inputs)).abs().max() <= 4 * out_scale


def test_ptq_folds_batch_norm_into_a_grouped_transposed_conv():
    # groups=2: rows of group g scale by the batch norm of that group's output channels
    inputs = (torch.randn(1, 4, 5, 5),)
    model = ConvWithBNRelu(transpose=True, channels=4, groups=2).eval()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    m = quantize(model, symmetric(is_per_channel=True), inputs)
    assert op_counts(m)[aten.batch_norm.default] == 0
    out_scale = next(
        n for n in m.graph.nodes if n.target == Q and n.args[0].target == aten.relu.default
    ).args[1]
    assert (m(*inputs) - model(*inputs)).abs().max() <= 4 * out_scale


def test_pooling_shares_its_input_observer():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3)
            self.pool = torch.nn.MaxPool2d(2)

        def forward(self, x):
            return self.pool(self.conv(x))

    inputs = (torch.randn(1, 3, 6, 6),)
    m = prepare_pt2e(export(M().eval(), inputs), symmetric())
    pool = next(n for n in m.graph.nodes if n.target == aten.max_pool2d.default)
    out_observer = next(iter(pool.users))
    # one module instance observes both the pool's input and its output
    assert pool.args[0].target == out_observer.target
    m(*inputs)
    m = convert_pt2e(m)
    pool = next(n for n in m.graph.nodes if n.target == aten.max_pool2d.default)
    q_after = next(iter(pool.users))
    assert q_after.args[1:3] == pool.args[0].args[1:3]


def _q_scales(m):
    """Scale of every activation quantize, in graph order."""
    return [n.args[1] for n in m.graph.nodes if n.target == Q and n.args[0].op != "get_attr"]


def test_average_pooling_stays_float_and_its_consumer_quantizes_the_narrower_range():
    inputs = (torch.randn(8, 3, 8, 8),)
    m = quantize(ConvBnReluPoolLinear().eval(), symmetric(), inputs)
    # dq -> avg_pool2d -> flatten -> q -> dq -> linear: the pooled values get their own observer
    assert contains_in_order(
        m,
        [aten.relu.default, Q, DQ, aten.avg_pool2d.default, aten.flatten.using_ints, Q, DQ, LINEAR],
    )
    # 4 activation quantizes: input, relu output, linear input, linear output; in particular
    # no second quantize with the relu's qparams after the pool, none after the flatten
    assert len(_q_scales(m)) == 4
    relu_scale, linear_in_scale = _q_scales(m)[1:3]
    # an average of 2x2 non-negative values spans less than they do: a finer grid
    assert linear_in_scale < relu_scale


def test_adaptive_average_pooling_shares_its_input_scale():
    inputs = (torch.randn(8, 3, 8, 8),)
    m = quantize(ConvBnReluPoolLinear(torch.nn.AdaptiveAvgPool2d(4)).eval(), symmetric(), inputs)
    pool = next(n for n in m.graph.nodes if n.target == aten.adaptive_avg_pool2d.default)
    q_after = next(iter(pool.users))
    assert q_after.target == Q and q_after.args[1:3] == pool.args[0].args[1:3]


def test_convert_without_calibration_warns_naming_the_uncalibrated_observers():
    # no forward pass between prepare and convert: every observer still holds (+inf, -inf)
    m = prepare_pt2e(export(torch.nn.Linear(4, 4).eval(), (torch.randn(2, 4),)), symmetric())
    with pytest.warns(UncalibratedObserverWarning, match=r"3 observer\(s\) never saw data") as rec:
        convert_pt2e(m)
    # the weight, the input and the output observers, each with the value it guards
    message = str(rec[0].message)
    assert "'weight' -> 'linear'" in message and "'linear' -> 'output'" in message


def test_convert_after_calibration_does_not_warn():
    m = prepare_pt2e(export(torch.nn.Linear(4, 4).eval(), (torch.randn(2, 4),)), symmetric())
    m(torch.randn(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_pt2e(m)


def test_derived_bias_scale_is_input_scale_times_weight_scale():
    act = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=observers.MinMaxObserver,
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-127,
        quant_max=127,
        qscheme=torch.per_tensor_symmetric,
        observer_or_fake_quant_ctr=observers.MinMaxObserver,
    )

    def bias_qparams(obs):
        (s_x, _), (s_w, _) = (o.calculate_qparams() for o in obs)
        return s_x * s_w, torch.zeros_like(s_x, dtype=torch.int32)

    class WithInt32Bias(Quantizer):
        def annotate(self, model):
            for n in model.graph.nodes:
                if n.target == aten.linear.default:
                    x, w, b = n.args
                    bias = DerivedQuantizationSpec(
                        derived_from=[(x, n), (w, n)],
                        derive_qparams_fn=bias_qparams,
                        dtype=torch.int32,
                        quant_min=-(2**31),
                        quant_max=2**31 - 1,
                        qscheme=torch.per_tensor_symmetric,
                    )
                    n.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={x: act, w: weight, b: bias},
                        output_qspec=act,
                        _annotated=True,
                    )
            return model

    m = quantize(LinearModel().eval(), WithInt32Bias(), LINEAR_IN)
    linear = next(n for n in m.graph.nodes if n.target == aten.linear.default)
    s_x, s_w, s_b = (linear.args[i].args[1] for i in range(3))
    assert linear.args[2].args[5] == torch.int32
    assert s_b == pytest.approx(s_x * s_w, rel=1e-6)


def test_module_type_config_none_keeps_those_modules_in_float():
    from pt2e_models import ConvLinearWPermute

    quantizer = symmetric().set_module_type(torch.nn.Linear, None)
    m = quantize(ConvLinearWPermute().eval(), quantizer, (torch.randn(1, 3, 4, 4),))
    linear = next(n for n in m.graph.nodes if n.target == aten.linear.default)
    assert linear.args[1].op == "get_attr"  # float weight, no dequantize
    assert op_counts(m)[aten.conv2d.default] == 1


def test_module_name_config_overrides_the_global_one():
    from pt2e_models import ConvLinearWPermute

    quantizer = symmetric().set_module_name("conv", None)
    m = quantize(ConvLinearWPermute().eval(), quantizer, (torch.randn(1, 3, 4, 4),))
    conv = next(n for n in m.graph.nodes if n.target == aten.conv2d.default)
    linear = next(n for n in m.graph.nodes if n.target == aten.linear.default)
    assert conv.args[1].op == "get_attr"
    assert linear.args[1].target == DQ


def test_operator_type_config_quantizes_only_that_operator():
    from pt2e_models import ConvLinearWPermute

    quantizer = SymmetricQuantizer().set_operator_type(
        torch.ops.aten.linear, get_symmetric_quantization_config()
    )
    m = quantize(ConvLinearWPermute().eval(), quantizer, (torch.randn(1, 3, 4, 4),))
    conv = next(n for n in m.graph.nodes if n.target == aten.conv2d.default)
    linear = next(n for n in m.graph.nodes if n.target == aten.linear.default)
    assert conv.args[1].op == "get_attr"
    assert linear.args[0].target == DQ and linear.args[1].target == DQ


def test_ptq_folds_batch_norm_into_conv_before_observing_the_weight():
    inputs = (torch.randn(2, 3, 6, 6),)
    model = ConvWithBNRelu().eval()
    # non-trivial statistics, so folding changes the weight
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    m = quantize(model, symmetric(is_per_channel=True), inputs)
    counts = op_counts(m)
    assert counts[aten.batch_norm.default] == 0
    assert contains_in_order(m, [DQ, DQ_CH, aten.conv2d.default, aten.relu.default, Q, DQ])
    out_q = next(
        n for n in m.graph.nodes if n.target == Q and n.args[0].target == aten.relu.default
    )
    assert (m(*inputs) - model(*inputs)).abs().max() <= 4 * out_q.args[1]


def test_conv1d_is_quantized_like_conv2d():
    inputs = (torch.randn(2, 3, 8),)
    m = quantize(torch.nn.Sequential(torch.nn.Conv1d(3, 4, 3)).eval(), symmetric(), inputs)
    counts = op_counts(m)
    assert (counts[Q], counts[DQ], counts[aten.conv1d.default]) == (2, 3, 1)


def test_convert_rejects_a_model_that_was_not_exported():
    with pytest.raises(TypeError, match=r"convert_pt2e: model must be an exported graph"):
        convert_pt2e(LinearModel())


def test_shared_spec_pointing_at_an_unquantized_edge_is_an_error_naming_it():
    from harness.quant.pt2e import SharedQuantizationSpec

    class SharesWithNothing(Quantizer):
        def annotate(self, model):
            linear = next(n for n in model.graph.nodes if n.target == aten.linear.default)
            x, w = linear.args[:2]
            linear.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={x: SharedQuantizationSpec((w, linear))}, _annotated=True
            )
            return model

    gm = export(LinearModel(), LINEAR_IN)
    with pytest.raises(ValueError, match=r"refers to the edge '\w*weight' -> 'linear'"):
        prepare_pt2e(gm, SharesWithNothing())


def test_a_value_passed_between_two_configs_with_equal_activation_specs_is_quantized_once():
    from pt2e_models import ConvLinearWPermute

    quantizer = symmetric(is_per_channel=True).set_module_type(
        torch.nn.Linear, get_symmetric_quantization_config(is_per_channel=False)
    )
    m = quantize(ConvLinearWPermute().eval(), quantizer, (torch.randn(1, 3, 4, 4),))
    # x, conv output, permute output (same qparams as the conv output), linear output; the
    # linear's input reuses the permute's quantized output instead of quantizing it again.
    assert op_counts(m)[Q] == 4
    linear = next(n for n in m.graph.nodes if n.target == aten.linear.default)
    assert linear.args[0].args[0].args[0].target == aten.permute.default


def test_transposed_conv_weight_is_quantized_per_output_channel_on_axis_1():
    inputs = (torch.randn(1, 3, 4, 4),)
    model = torch.nn.Sequential(torch.nn.ConvTranspose2d(3, 5, 3)).eval()
    m = quantize(model, symmetric(is_per_channel=True), inputs)
    dq = next(n for n in m.graph.nodes if n.target == DQ_CH)
    # a transposed conv weight is [in=3, out=5, kH, kW]: one scale per output channel, axis 1
    assert dq.args[3] == 1 and getattr(m, dq.args[1].target).shape == (5,)
    assert m(*inputs).shape == (1, 5, 6, 6)
