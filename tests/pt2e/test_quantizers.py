"""Composable and embedding quantizers."""

import pytest
import torch
from pt2e_models import ConvLinearWPermute, EmbeddingModule, export, quantize, symmetric

from harness.quant.pt2e import ComposableQuantizer, EmbeddingQuantizer, Quantizer, prepare_pt2e
from harness.quant.pt2e.graph_summary import contains_in_order, op_counts

qd = torch.ops.quantized_decomposed
aten = torch.ops.aten


def test_dynamic_then_static_quantizer_quantizes_linear_dynamically_and_conv_statically():
    # The dynamic quantizer goes first: the static one would otherwise claim the linear.
    quantizer = ComposableQuantizer([symmetric(is_dynamic=True), symmetric(is_per_channel=True)])
    m = quantize(ConvLinearWPermute().eval(), quantizer, (torch.randn(2, 3, 4, 4),))
    counts = op_counts(m)
    expected = {
        # the linear's input: qparams chosen per call
        qd.choose_qparams.tensor: 1,
        qd.quantize_per_tensor.tensor: 1,
        qd.dequantize_per_tensor.tensor: 1,
        # conv input, conv output, permute output (sharing the conv output's qparams)
        qd.quantize_per_tensor.default: 3,
        # those three + the linear's per-tensor weight
        qd.dequantize_per_tensor.default: 4,
        # conv weight, per channel, folded
        qd.quantize_per_channel.default: 0,
        qd.dequantize_per_channel.default: 1,
    }
    assert {k: counts[k] for k in expected} == expected


class _WipesAnnotations(Quantizer):
    def annotate(self, model):
        for n in model.graph.nodes:
            n.meta["quantization_annotation"] = None
        return model


def test_composable_quantizer_refuses_a_quantizer_that_rewrites_earlier_annotations():
    quantizer = ComposableQuantizer([symmetric(is_per_channel=True), _WipesAnnotations()])
    gm = export(ConvLinearWPermute().eval(), (torch.randn(2, 3, 4, 4),))
    with pytest.raises(RuntimeError, match=r"_WipesAnnotations changed .* node 'conv2d'"):
        prepare_pt2e(gm, quantizer)


INDICES = torch.tensor([9, 6, 5, 7, 8, 8, 9, 2, 8, 6, 6, 9, 1, 6, 8, 8, 3, 2, 3, 6, 3, 6, 5])


def test_embedding_quantizer_stores_the_table_as_uint8_rows_with_float_qparams():
    model = EmbeddingModule().eval()
    m = quantize(model, EmbeddingQuantizer(), (INDICES,))
    counts = op_counts(m)
    assert counts[qd.quantize_per_channel.default] == 0
    assert counts[qd.dequantize_per_channel.default] == 1
    assert contains_in_order(m, [qd.dequantize_per_channel.default, aten.embedding.default])
    dq = next(n for n in m.graph.nodes if n.target == qd.dequantize_per_channel.default)
    table, scales, zero_points = (getattr(m, a.target) for a in dq.args[:3])
    assert table.dtype == torch.uint8 and table.shape == (10, 12)
    assert scales.shape == (10,) and zero_points.is_floating_point()
    # Each row covers its own [min, max] on 255 steps. The quantized_decomposed schema
    # computes round(x / s) + z and then truncates to uint8, so a fractional float zero point
    # adds up to one step on top of the half step of rounding: the error stays below 1.5 steps.
    error = (m(INDICES) - model(INDICES)).abs()
    assert bool((error < 1.5 * scales[INDICES].unsqueeze(1)).all())
