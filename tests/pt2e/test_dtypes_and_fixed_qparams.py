"""Activation dtypes beyond int8, and specs whose qparams are fixed in advance."""

import pytest
import torch
from pt2e_models import ConvModel, quantize

from harness.quant import observers
from harness.quant.pt2e import (
    OP_TO_ANNOTATOR,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationConfig,
    QuantizationSpec,
    Quantizer,
)
from harness.quant.pt2e.graph_summary import contains_in_order, op_counts

qd = torch.ops.quantized_decomposed
aten = torch.ops.aten
Q, DQ = qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default


@pytest.mark.parametrize("dtype", [torch.int16, torch.float8_e5m2, torch.float8_e4m3fn])
def test_conv_activations_quantize_to_the_requested_dtype(dtype):
    info = torch.iinfo if dtype == torch.int16 else torch.finfo
    act = QuantizationSpec(
        dtype=dtype,
        quant_min=int(info(dtype).min),
        quant_max=int(info(dtype).max),
        qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=observers.MinMaxObserver,
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_tensor_symmetric,
        observer_or_fake_quant_ctr=observers.MinMaxObserver,
    )
    config = QuantizationConfig(act, act, weight, None)

    class DtypeActQuantizer(Quantizer):
        def annotate(self, model):
            OP_TO_ANNOTATOR["conv"](model, config)
            return model

    m = quantize(ConvModel().eval(), DtypeActQuantizer(), (torch.randn(1, 3, 3, 3),))
    counts = op_counts(m)
    assert (counts[Q], counts[DQ]) == (2, 3)
    assert contains_in_order(m, [DQ, DQ, aten.conv2d.default, Q])
    activation_dtypes = {n.args[5] for n in m.graph.nodes if n.target == Q}
    assert activation_dtypes == {dtype}


class _Sigmoid(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x):
        return torch.sigmoid(self.linear(x))


class _FixedSigmoidQuantizer(Quantizer):
    """sigmoid maps into (0, 1): uint8 with scale 1/256 and zero point 0 covers it exactly."""

    def annotate(self, model):
        for node in model.graph.nodes:
            if node.target == aten.sigmoid.default:
                act = QuantizationSpec(
                    dtype=torch.uint8,
                    quant_min=0,
                    quant_max=255,
                    qscheme=torch.per_tensor_affine,
                    observer_or_fake_quant_ctr=observers.MinMaxObserver,
                )
                fixed = FixedQParamsQuantizationSpec(
                    dtype=torch.uint8,
                    scale=1.0 / 256.0,
                    zero_point=0,
                    quant_min=0,
                    quant_max=255,
                    qscheme=torch.per_tensor_affine,
                )
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={node.args[0]: act},
                    output_qspec=fixed,
                    _annotated=True,
                )
        return model


@pytest.mark.parametrize("is_qat", [False, True], ids=["ptq", "qat"])
def test_fixed_qparams_spec_sets_the_output_qparams(is_qat):
    # Inputs scaled so the observed sigmoid range alone would give a different scale.
    inputs = (torch.randn(2, 4) * 0.1,)
    m = quantize(_Sigmoid().eval(), _FixedSigmoidQuantizer(), inputs, is_qat=is_qat)
    sigmoid = next(n for n in m.graph.nodes if n.target == aten.sigmoid.default)
    q = next(iter(sigmoid.users))
    dq = next(iter(q.users))
    assert (q.target, dq.target) == (Q, DQ)
    assert q.args[1:] == (1.0 / 256.0, 0, 0, 255, torch.uint8)
    assert dq.args[1:] == q.args[1:]
