"""Static quantized Conv1d/2d/3d and ConvReLU2d/3d: engines, serialization, state, inputs."""

from collections import OrderedDict

import pytest
import torch
from quant_support import NATIVE

from harness import compat
from harness.quant import engines as E
from harness.quant import nn as qnn
from harness.quant.nn.testing import export_roundtrip, script_roundtrip, trace_roundtrip
from harness.quant.qconfig import get_default_qconfig

# (class, float class, input shape, conv kwargs)
CASES = {
    "conv1d": (qnn.Conv1d, torch.nn.Conv1d, (2, 4, 11), {"stride": 2, "padding": 1}),
    "conv2d": (qnn.Conv2d, torch.nn.Conv2d, (2, 4, 7, 6), {"padding": (1, 2), "dilation": (1, 2)}),
    "conv2d_groups": (qnn.Conv2d, torch.nn.Conv2d, (1, 4, 6, 6), {"groups": 2, "stride": 2}),
    "conv3d": (qnn.Conv3d, torch.nn.Conv3d, (1, 4, 4, 5, 4), {"padding": 1}),
    "convrelu2d": (qnn.ConvReLU2d, torch.nn.Conv2d, (2, 4, 6, 5), {"padding": 1}),
    "convrelu3d": (qnn.ConvReLU3d, torch.nn.Conv3d, (1, 4, 3, 4, 4), {}),
}


def make_conv(name, seed=0, per_channel=True, bias=True):
    cls, _, shape, kw = CASES[name]
    gen = torch.Generator().manual_seed(seed)
    m = cls(shape[1], 6, 3, bias=bias, **kw)
    w = torch.randint(-127, 128, tuple(m.weight.shape), dtype=torch.int8, generator=gen)
    scales = 0.001 + 0.01 * torch.rand(6 if per_channel else 1, generator=gen)
    b = torch.randn(6, generator=gen) if bias else None
    m.set_weight_bias(w, scales, torch.zeros_like(scales, dtype=torch.int64), b)
    m.set_output_qparams(0.1, 90)
    return m


def make_input(name, seed=1, high=256):
    shape = CASES[name][2]
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, high, shape, dtype=torch.uint8, generator=gen)
    return q, torch.tensor([0.05]), torch.tensor([50])


def run(m, engine, args):
    with E.use_engine(engine):
        return m(*args)[0]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("per_channel", [True, False])
def test_int_mm_is_bit_identical_to_reference(name, per_channel):
    m = make_conv(name, per_channel=per_channel)
    args = make_input(name)
    assert torch.equal(run(m, "int_mm", args), run(m, "reference", args))


@pytest.mark.parametrize("name", list(CASES))
def test_output_shape_matches_torch_conv(name):
    _, fcls, shape, kw = CASES[name]
    expected = fcls(shape[1], 6, 3, **kw)(torch.zeros(shape)).shape
    assert run(make_conv(name), "reference", make_input(name)).shape == expected


def test_reference_conv_matches_float_conv_within_one_step():
    m = make_conv("conv2d")
    q, s, z = make_input("conv2d")
    y = run(m, "reference", (q, s, z))
    x_f = (q.float() - z) * s
    w_f = m.weight.float() * m.weight_scale.reshape(-1, 1, 1, 1)
    y_f = torch.nn.functional.conv2d(x_f, w_f, m.bias, padding=(1, 2), dilation=(1, 2))
    y_deq = (y.float() - m.zero_point) * m.scale
    inside = (y > 0) & (y < 255)
    assert (y_deq - y_f)[inside].abs().max() <= m.scale * (1 + 1e-4)


@pytest.mark.parametrize("engine", NATIVE)
@pytest.mark.parametrize("name", list(CASES))
def test_native_engine_within_one_step_of_reference(engine, name):
    m = make_conv(name)
    args = make_input(name, high=128)  # reduce_range codes, see test_nn_linear
    diff = (run(m, engine, args).int() - run(m, "reference", args).int()).abs()
    assert int(diff.max()) <= 1


@pytest.mark.parametrize("engine", NATIVE)
@pytest.mark.parametrize("name", ["conv1d", "conv2d", "conv3d", "convrelu2d"])
def test_native_engine_equals_torch_ao_module(engine, name):
    _, _, shape, kw = CASES[name]
    m = make_conv(name, seed=3)
    q, s, z = make_input(name, high=128)
    with E.native_backend(engine), compat.expected_torch_deprecations():
        import torch.ao.nn.intrinsic.quantized as nniq
        import torch.ao.nn.quantized as nnq

        ao_cls = {
            "conv1d": nnq.Conv1d,
            "conv2d": nnq.Conv2d,
            "conv3d": nnq.Conv3d,
            "convrelu2d": nniq.ConvReLU2d,
        }[name]
        ao = ao_cls(shape[1], 6, 3, **kw)
        ao.set_weight_bias(
            E.to_torch_qweight(m.weight, m.weight_scale, m.weight_zero_point), m.bias
        )
        ao.scale, ao.zero_point = float(m.scale), int(m.zero_point)
        expected = ao(E.to_torch_qtensor(q, s, z)).int_repr()
    assert torch.equal(run(m, engine, (q, s, z)), expected)


@pytest.mark.parametrize("name", ["conv1d", "conv2d", "conv3d", "convrelu2d", "convrelu3d"])
def test_from_float_quantizes_weights_per_channel(name):
    cls, fcls, shape, kw = CASES[name]
    torch.manual_seed(0)
    conv = fcls(shape[1], 6, 3, **kw)
    f = torch.nn.Sequential(conv, torch.nn.ReLU()) if "relu" in name else conv
    f.qconfig = get_default_qconfig("reference")
    f.activation_post_process = f.qconfig.activation()
    x = torch.randn(shape)
    f.activation_post_process(f(x))
    m = cls.from_float(f)
    assert m.weight_scale.shape == (6,)
    out = qnn.DeQuantize()(*m(*qnn.Quantize(0.03, 128)(x)))
    assert (out - f(x)).abs().max() < 0.15


def test_padding_mode_other_than_zeros_is_rejected():
    with pytest.raises(ValueError, match=r"^padding_mode:"):
        qnn.Conv2d(2, 2, 3, padding_mode="reflect")


# Each round trip costs seconds: both engines on the grouped 2-D conv (the two engines differ
# only in the accumulator kernel), int_mm on the other ranks.
@pytest.mark.parametrize(
    "engine,name",
    [
        ("reference", "conv2d_groups"),
        ("int_mm", "conv2d_groups"),
        ("int_mm", "conv1d"),
        ("int_mm", "conv3d"),
        ("int_mm", "convrelu2d"),
    ],
)
def test_script_trace_export_round_trip_give_identical_outputs(engine, name):
    m = make_conv(name)
    args = make_input(name)
    eager = run(m, engine, args)
    for loaded in (
        script_roundtrip(m, engine),
        trace_roundtrip(m, args, engine),
        export_roundtrip(m, args, engine),
    ):
        assert torch.equal(loaded(*args)[0], eager)


def test_exported_conv_keeps_the_input_zero_point_as_data():
    # Padding reads z_x through torch.where on the input tensor, so one exported program serves
    # any input zero point.
    m = make_conv("conv2d")
    q, s, _ = make_input("conv2d")
    loaded = export_roundtrip(m, (q, s, torch.tensor([50])), "int_mm")
    other = (q, s, torch.tensor([7]))
    assert torch.equal(loaded(*other)[0], run(m, "reference", other))


def test_version_1_state_dict_is_migrated():
    m = make_conv("conv2d")
    old = OrderedDict(
        weight=m.weight.clone(),
        weight_qparams=torch.stack([m.weight_scale.double(), m.weight_zero_point.double()]),
        bias=m.bias.clone(),
        output_scale=m.scale.double().reshape(()),
        output_zero_point=m.zero_point.reshape(()),
    )
    old._metadata = OrderedDict({"": {"version": 1}})
    fresh = qnn.Conv2d(4, 6, 3, padding=(1, 2), dilation=(1, 2))
    fresh.load_state_dict(old)
    args = make_input("conv2d")
    assert torch.equal(fresh(*args)[0], m(*args)[0])


@pytest.mark.parametrize(
    "q,name",
    [
        (torch.zeros(2, 4, 7, 6), "x_q"),  # float codes
        (torch.zeros(4, 7, 6, dtype=torch.uint8), "x_q"),  # unbatched rank 3
        (torch.zeros(2, 3, 7, 6, dtype=torch.uint8), "x_q"),  # wrong channel count
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(q, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        make_conv("conv2d")(q, 0.1, 0)


def test_non_positive_input_scale_raises_value_error():
    q = torch.zeros(2, 4, 7, 6, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"^x_scale:"):
        make_conv("conv2d")(q, torch.tensor([0.0]), torch.tensor([0]))
