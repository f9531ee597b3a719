"""The Quantizer API objects: specs validate their arguments, recipes have the documented shape."""

import pytest
import torch

from harness.quant.pt2e import (
    FixedQParamsQuantizationSpec,
    QuantizationSpec,
    get_symmetric_quantization_config,
)


def _ctr(**kwargs):
    raise AssertionError("never called by these tests")


def test_spec_rejects_an_unsupported_dtype_naming_the_argument():
    with pytest.raises(
        ValueError, match=r"QuantizationSpec\.dtype: unsupported dtype torch\.float64"
    ):
        QuantizationSpec(dtype=torch.float64, observer_or_fake_quant_ctr=_ctr)


def test_spec_maps_legacy_quantized_dtypes_to_plain_ones():
    spec = QuantizationSpec(dtype=torch.qint8, observer_or_fake_quant_ctr=_ctr)
    assert spec.dtype == torch.int8


@pytest.mark.parametrize(
    ("qmin", "qmax", "message"),
    [
        (10, 5, r"quant_min: 10 is greater than quant_max 5"),
        # int8 holds [-128, 127]: 200 does not fit.
        (0, 200, r"quant_max: 200 outside the torch\.int8 range"),
    ],
)
def test_spec_rejects_a_range_the_dtype_cannot_hold(qmin, qmax, message):
    with pytest.raises(ValueError, match=message):
        QuantizationSpec(
            dtype=torch.int8, quant_min=qmin, quant_max=qmax, observer_or_fake_quant_ctr=_ctr
        )


def test_per_channel_spec_requires_a_channel_axis():
    with pytest.raises(ValueError, match="ch_axis"):
        QuantizationSpec(
            dtype=torch.int8,
            qscheme=torch.per_channel_symmetric,
            observer_or_fake_quant_ctr=_ctr,
        )


def test_fixed_qparams_spec_rejects_a_non_positive_scale():
    with pytest.raises(ValueError, match=r"FixedQParamsQuantizationSpec\.scale"):
        FixedQParamsQuantizationSpec(dtype=torch.uint8, scale=0.0, zero_point=0)


def test_symmetric_config_per_channel_weights_are_int8_symmetric_without_minus_128():
    config = get_symmetric_quantization_config(is_per_channel=True)
    w = config.weight
    assert (w.dtype, w.qscheme, w.ch_axis) == (torch.int8, torch.per_channel_symmetric, 0)
    # -128 is left out so that negating a weight never overflows.
    assert (w.quant_min, w.quant_max) == (-127, 127)
    act = config.input_activation
    assert (act.dtype, act.qscheme, act.quant_min, act.quant_max) == (
        torch.int8,
        torch.per_tensor_affine,
        -128,
        127,
    )
    assert config.output_activation == act


def test_symmetric_config_dynamic_leaves_outputs_in_float():
    config = get_symmetric_quantization_config(is_dynamic=True)
    assert config.input_activation.is_dynamic
    assert config.output_activation is None


def test_symmetric_config_is_cached_so_equal_requests_share_specs():
    a = get_symmetric_quantization_config(is_per_channel=False)
    b = get_symmetric_quantization_config(is_per_channel=False)
    assert a is b


def test_qat_config_builds_fake_quant_modules():
    config = get_symmetric_quantization_config(is_qat=True)
    spec = config.weight
    module = spec.observer_or_fake_quant_ctr(
        dtype=spec.dtype,
        qscheme=spec.qscheme,
        quant_min=spec.quant_min,
        quant_max=spec.quant_max,
        is_dynamic=False,
    )
    assert config.is_qat
    assert hasattr(module, "activation_post_process")
