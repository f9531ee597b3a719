"""Fake-quant modules: the behaviours of seed 002 (FakeQuantize, the fused observer + fake-quant
module) against qbc's API, and differential tests against torch's fake-quant ops and modules."""

import io
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from quant_support import requires_torch_ao

from harness.compat import expected_torch_deprecations
from harness.quant import fake_quantize as F
from harness.quant.fake_quantize import (
    FakeQuantize,
    FixedQParamsFakeQuantize,
    FusedMovingAvgObsFakeQuantize,
)
from harness.quant.observers import (
    FixedQParamsObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    load_observer_state_dict,
)
from harness.quant.qconfig import (
    default_dynamic_fake_quant,
    default_fixed_qparams_range_0to1_fake_quant,
    default_per_channel_weight_observer,
)

SETTINGS = settings(deadline=None, max_examples=25)


requires_torch_fused_op = pytest.mark.skipif(
    not hasattr(torch, "fused_moving_avg_obs_fake_quant"),
    reason=f"torch {torch.__version__} has no fused_moving_avg_obs_fake_quant op",
)


def _script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    with expected_torch_deprecations():
        return torch.jit.script(module)


def _reference_fake_quant(x, scale, zero_point, axis, qmin, qmax):
    """Textbook per-channel fake-quant, written independently of qbc's kernels, with torch's
    float32 arithmetic (multiply by 1/s) so that rounding ties resolve the same way."""
    shape = [1] * x.dim()
    shape[axis] = -1
    s = scale.reshape(shape)
    z = zero_point.reshape(shape).float()
    unclamped = torch.round(x * (1.0 / s)) + z
    q = torch.clamp(unclamped, qmin, qmax)
    inside = (unclamped >= qmin) & (unclamped <= qmax)
    return (q - z) * s, inside.float()


@given(
    rank=st.integers(2, 4),
    axis_pick=st.integers(0, 3),
    seed=st.integers(0, 2**31 - 1),
)
@SETTINGS
def test_per_channel_fake_quant_module_forward_and_backward(rank, axis_pick, seed):
    g = torch.Generator().manual_seed(seed)
    shape = torch.randint(2, 5, (rank,), generator=g).tolist()
    axis = axis_pick % rank
    x = (torch.randn(shape, generator=g) * 3).requires_grad_()
    fq = FakeQuantize(default_per_channel_weight_observer, -128, 127, ch_axis=axis)
    y = fq(x)
    assert fq.scale.shape == (shape[axis],) and fq.zero_point.shape == (shape[axis],)
    ref, mask = _reference_fake_quant(x.detach(), fq.scale, fq.zero_point, axis, -128, 127)
    assert torch.equal(y, ref)
    dout = torch.rand_like(x)
    y.backward(dout)
    assert torch.equal(x.grad, dout * mask)


def test_per_channel_fake_quant_state_dict_values_and_serialization():
    # rows [-5, 10] and [1, 10] with symmetric int8 over [-128, 127]: scale = max|x| / 127.5,
    # 7 / 127.5 = 0.054902 and 10 / 127.5 = 0.078431; zero point 0
    fq = FakeQuantize(default_per_channel_weight_observer, -128, 127)
    x = torch.tensor([[-5, -3.5, -2, 0, 3, 5, 7], [1, 3, 2, 5, 6.5, 8, 10]])
    fq(x)
    state = fq.state_dict()
    assert state["scale"].tolist() == pytest.approx([7 / 127.5, 10 / 127.5])
    assert state["zero_point"].tolist() == [0, 0]
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf)
    for key, value in state.items():
        assert torch.equal(value, loaded[key])


def test_per_channel_fake_quant_state_dict_loads_into_a_fresh_module():
    fq = FakeQuantize(default_per_channel_weight_observer, -128, 127)
    x = torch.randn(4, 6)
    y = fq(x)
    fresh = FakeQuantize(default_per_channel_weight_observer, -128, 127)
    fresh.load_state_dict(fq.state_dict())
    fresh.disable_observer()
    assert fresh.scale.shape == (4,)
    assert torch.equal(fresh(x), y)


def test_scripted_per_channel_fake_quant_loads_qparams_of_another_channel_count():
    source = _script(FakeQuantize(MovingAveragePerChannelMinMaxObserver))
    x = torch.randn(5, 3)
    y = source(x)
    target = _script(FakeQuantize(MovingAveragePerChannelMinMaxObserver))
    load_observer_state_dict(target, source.state_dict())
    target.disable_observer()
    assert target.scale.shape == (5,)
    assert torch.equal(target(x), y)


def test_quant_min_max_override():
    fq = FakeQuantize(default_per_channel_weight_observer)
    assert (fq.activation_post_process.quant_min, fq.activation_post_process.quant_max) == (
        -128,
        127,
    )
    fq = FakeQuantize(default_per_channel_weight_observer, quant_min=0, quant_max=127)
    assert (fq.activation_post_process.quant_min, fq.activation_post_process.quant_max) == (0, 127)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        (dict(quant_min=10, quant_max=0), "quant_min"),
        (dict(quant_min=-1, quant_max=255), "quant_min"),
        (dict(quant_min=0, quant_max=256), "quant_max"),
        (dict(quant_min=0), "quant_min/quant_max"),
        (
            dict(observer=MinMaxObserver, dtype=torch.qint8, quant_min=-200, quant_max=0),
            "quant_min",
        ),
    ],
)
def test_bad_fake_quant_arguments_raise_value_error_naming_them(kwargs, argument):
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        FakeQuantize(**kwargs)


def test_fake_quant_modifies_buffers_in_place():
    fq = FakeQuantize()
    before = [id(v) for v in fq._buffers.values()]
    for _ in range(5):
        fq(torch.rand(4, 4, 4))
    fq.apply(F.enable_fake_quant)
    fq.apply(F.disable_fake_quant)
    fq.apply(F.enable_observer)
    fq.apply(F.disable_observer)
    assert [id(v) for v in fq._buffers.values()] == before


def test_disabled_observer_freezes_qparams():
    fq = FakeQuantize()
    fq(torch.randn(8))
    frozen = fq.scale.clone(), fq.zero_point.clone()
    fq.disable_observer()
    fq(torch.randn(8) * 100)
    assert torch.equal(fq.scale, frozen[0]) and torch.equal(fq.zero_point, frozen[1])


def test_disabled_fake_quant_passes_the_input_through_but_still_observes():
    fq = FakeQuantize()
    fq.disable_fake_quant()
    x = torch.randn(8)
    assert torch.equal(fq(x), x)
    assert fq.activation_post_process.min_val.item() == x.min().item()


def test_apply_helpers_switch_nested_fake_quant_modules():
    model = torch.nn.Sequential(FakeQuantize(), torch.nn.ReLU(), FusedMovingAvgObsFakeQuantize())
    model.apply(F.disable_observer)
    model.apply(F.disable_fake_quant)
    assert [int(m.observer_enabled) for m in (model[0], model[2])] == [0, 0]
    assert [int(m.fake_quant_enabled) for m in (model[0], model[2])] == [0, 0]


def test_apply_helpers_switch_fake_quant_modules_inside_a_scripted_model():
    model = _script(
        torch.nn.Sequential(FakeQuantize(), torch.nn.ReLU(), FusedMovingAvgObsFakeQuantize())
    )
    model.apply(F.disable_observer)
    model.apply(F.disable_fake_quant)
    assert [int(model[i].observer_enabled) for i in (0, 2)] == [0, 0]
    assert [int(model[i].fake_quant_enabled) for i in (0, 2)] == [0, 0]
    x = torch.randn(4)
    assert torch.equal(model(x), torch.relu(x))


def test_fake_quant_is_scriptable_and_survives_save_load():
    fq = FakeQuantize()
    fq(torch.randn(4, 4))
    scripted = _script(fq)
    fq.disable_observer()
    scripted.disable_observer()
    x = torch.randn(4, 4)
    assert torch.equal(scripted(x), fq(x))
    buf = io.BytesIO()
    with expected_torch_deprecations():
        torch.jit.save(scripted, buf)
        buf.seek(0)
        loaded = torch.jit.load(buf)
    assert torch.equal(loaded(x), fq(x))


@requires_torch_ao
@pytest.mark.parametrize(
    ("ours_kwargs", "per_channel"),
    [
        ({}, False),
        (
            dict(
                dtype=torch.qint8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric
            ),
            False,
        ),
        (dict(quant_min=0, quant_max=255, reduce_range=True), False),
        (
            dict(
                observer="MovingAveragePerChannelMinMaxObserver",
                quant_min=-128,
                quant_max=127,
                dtype=torch.qint8,
                qscheme=torch.per_channel_symmetric,
                ch_axis=1,
            ),
            True,
        ),
        (
            dict(
                observer="MovingAveragePerChannelMinMaxObserver",
                qscheme=torch.per_channel_affine_float_qparams,
                dtype=torch.quint8,
                quant_min=0,
                quant_max=255,
                ch_axis=0,
                averaging_constant=1,
            ),
            True,
        ),
    ],
    ids=["default", "symmetric-int8", "reduce-range", "per-channel", "float-qparams"],
)
def test_fake_quantize_is_bit_identical_to_torch_ao(ours_kwargs, per_channel):
    import torch.ao.quantization as tq

    import harness.quant.observers as ours_obs

    name = ours_kwargs.get("observer")
    theirs_kwargs = dict(ours_kwargs)
    if name:
        ours_kwargs = {**ours_kwargs, "observer": getattr(ours_obs, name)}
        theirs_kwargs["observer"] = getattr(tq, name)
    ours = FakeQuantize(**ours_kwargs)
    with expected_torch_deprecations(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Please use quant_min", category=UserWarning)
        theirs = tq.FakeQuantize(**theirs_kwargs)
    for i in range(4):
        x = (torch.randn(6, 7) * (i + 1)).requires_grad_()
        xt = x.detach().clone().requires_grad_()
        y, yt = ours(x), theirs(xt)
        g = torch.randn_like(y)
        y.backward(g)
        yt.backward(g)
        assert torch.equal(ours.scale, theirs.scale)
        assert torch.equal(ours.zero_point, theirs.zero_point)
        assert ours.zero_point.dtype == theirs.zero_point.dtype
        assert torch.equal(y, yt)
        assert torch.equal(x.grad, xt.grad)


@requires_torch_ao
@given(
    per_channel=st.booleans(),
    symmetric=st.booleans(),
    signed=st.booleans(),
    averaging_constant=st.sampled_from([0.01, 0.3, 1.0]),
    ch_axis=st.integers(0, 2),
    seed=st.integers(0, 2**31 - 1),
)
@SETTINGS
def test_fake_quantize_matches_torch_ao_on_random_configurations(
    per_channel, symmetric, signed, averaging_constant, ch_axis, seed
):
    import torch.ao.quantization as tq

    import harness.quant.observers as ours_obs

    name = "MovingAveragePerChannelMinMaxObserver" if per_channel else "MovingAverageMinMaxObserver"
    if per_channel:
        qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    else:
        qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    kwargs = dict(
        dtype=torch.qint8 if signed else torch.quint8,
        quant_min=-128 if signed else 0,
        quant_max=127 if signed else 255,
        qscheme=qscheme,
        averaging_constant=averaging_constant,
    )
    if per_channel:
        kwargs["ch_axis"] = ch_axis
    ours = FakeQuantize(observer=getattr(ours_obs, name), **kwargs)
    with expected_torch_deprecations():
        theirs = tq.FakeQuantize(observer=getattr(tq, name), **kwargs)
    g = torch.Generator().manual_seed(seed)
    for i in range(3):
        x = (torch.randn(3, 4, 5, generator=g) * (1 + i) + i).requires_grad_()
        xt = x.detach().clone().requires_grad_()
        y, yt = ours(x), theirs(xt)
        y.sum().backward()
        yt.sum().backward()
        assert torch.equal(y, yt)
        assert torch.equal(x.grad, xt.grad)
        assert torch.equal(ours.scale, theirs.scale)
        assert torch.equal(ours.zero_point, theirs.zero_point)


HALF_DTYPES = [torch.float16, torch.bfloat16]
# (qbc qconfig name, torch.ao qconfig name): per tensor, per channel, fixed qparams, and the
# embedding's per-row float qparams
HALF_FAKE_QUANTS = [
    "default_fake_quant",
    "default_per_channel_weight_fake_quant",
    "default_fixed_qparams_range_0to1_fake_quant",
    "default_embedding_fake_quant",
]


@requires_torch_ao
@pytest.mark.parametrize("name", HALF_FAKE_QUANTS)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_precision_fake_quant_returns_the_input_dtype_bit_identical_to_torch_ao(name, dtype):
    # torch computes in float32 and rounds the result back once to the input's dtype; a
    # float32 result would feed float32 to the next layer of a half-precision QAT model
    import torch.ao.quantization as tq

    from harness.quant import qconfig as qc

    ours = getattr(qc, name)()
    with expected_torch_deprecations():
        theirs = getattr(tq, name)()
    for i in range(3):
        x = (torch.randn(4, 3, 5) * (i + 1)).to(dtype).requires_grad_()
        xt = x.detach().clone().requires_grad_()
        y, yt = ours(x), theirs(xt)
        y.sum().backward()
        yt.sum().backward()
        assert y.dtype == yt.dtype == dtype
        assert torch.equal(y, yt)
        assert x.grad.dtype == dtype and torch.equal(x.grad, xt.grad)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_precision_fused_fake_quant_returns_the_input_dtype(dtype):
    # torch's fused op refuses half inputs; ours equals the composed modules, in half
    fused = FusedMovingAvgObsFakeQuantize()
    composed = FakeQuantize(MovingAverageMinMaxObserver, quant_min=0, quant_max=255)
    x = torch.randn(5, 5).to(dtype)
    y = fused(x)
    assert y.dtype == dtype and torch.equal(y, composed(x))
    # rounding back to the input dtype is the only difference from the float32 computation
    assert torch.equal(y, composed(x.float()).to(dtype))


# --------------------------------------------------------------------------------------------
# FusedMovingAvgObsFakeQuantize
# --------------------------------------------------------------------------------------------


def _torch_fused_state(channels: int | None):
    shape = () if channels is None else (channels,)
    running_min = torch.full(shape, float("inf"))
    running_max = torch.full(shape, float("-inf"))
    n = 1 if channels is None else channels
    return (
        running_min,
        running_max,
        torch.full((n,), 1.0 if channels is None else 0.1),
        torch.zeros(n, dtype=torch.int),
    )


@requires_torch_fused_op
def test_fused_module_matches_torch_fused_op():
    x = torch.randn(5, 5)
    running_min, running_max, scale, zero_point = _torch_fused_state(None)
    mod = FusedMovingAvgObsFakeQuantize()
    out = mod(x)
    out_ref = torch.fused_moving_avg_obs_fake_quant(
        x, mod.observer_enabled, mod.fake_quant_enabled, running_min, running_max, scale,
        zero_point, 0.01, 0, 255, 0, False,
    )  # fmt: skip
    torch.testing.assert_close(out, out_ref)
    assert torch.equal(running_min, mod.activation_post_process.min_val)
    assert torch.equal(running_max, mod.activation_post_process.max_val)


@requires_torch_fused_op
def test_fused_module_moving_average_with_switches_matches_torch_fused_op():
    running_min, running_max, scale, zero_point = _torch_fused_state(None)
    mod = FusedMovingAvgObsFakeQuantize(averaging_constant=0.001)
    mod.observer_enabled[0] = 0
    mod.fake_quant_enabled[0] = 0
    for i in range(10):
        x = torch.randn(5, 5)
        if i > 2:
            mod.observer_enabled[0] = 1
        if i > 4:
            mod.fake_quant_enabled[0] = 1
        out = mod(x)
        out_ref = torch.fused_moving_avg_obs_fake_quant(
            x, mod.observer_enabled, mod.fake_quant_enabled, running_min, running_max, scale,
            zero_point, 0.001, 0, 255, 0, False,
        )  # fmt: skip
        torch.testing.assert_close(out, out_ref)
        assert torch.equal(running_min, mod.activation_post_process.min_val)
        assert torch.equal(running_max, mod.activation_post_process.max_val)


# averaging_constant=1 (dynamic QAT): a constant batch after a wider one leaves the running
# min 1 ULP above the running max (-2.5 + 1 * 3.2 = 0.70000005 > 0.69999999)
CROSSING_BATCHES = (torch.tensor([-2.5, 1.0]), torch.full((3,), 0.7))


@pytest.mark.parametrize(
    "make",
    [
        lambda: FusedMovingAvgObsFakeQuantize(averaging_constant=1.0),
        lambda: FakeQuantize(
            MovingAverageMinMaxObserver, quant_min=0, quant_max=255, averaging_constant=1.0
        ),
        default_dynamic_fake_quant,
    ],
    ids=["fused", "fake-quant", "default-dynamic"],
)
def test_averaging_constant_one_fake_quant_survives_min_and_max_crossing_by_rounding(make):
    mod = make()
    for x in CROSSING_BATCHES:
        out = mod(x)
    # the qparams of [0, 0.7] (range widened to include 0): 0.7 is on the grid's last step
    assert mod.scale.item() == pytest.approx(0.7 / 255) and mod.zero_point.item() == 0
    assert out.tolist() == pytest.approx([0.7] * 3, abs=0.7 / 255 / 2)


@requires_torch_fused_op
def test_fused_module_with_averaging_constant_one_matches_torch_fused_op():
    running_min, running_max, scale, zero_point = _torch_fused_state(None)
    mod = FusedMovingAvgObsFakeQuantize(averaging_constant=1.0)
    for x in CROSSING_BATCHES:
        out = mod(x)
        out_ref = torch.fused_moving_avg_obs_fake_quant(
            x, mod.observer_enabled, mod.fake_quant_enabled, running_min, running_max, scale,
            zero_point, 1.0, 0, 255, 0, False,
        )  # fmt: skip
        assert torch.equal(out, out_ref)
        assert torch.equal(running_min, mod.activation_post_process.min_val)
        assert torch.equal(running_max, mod.activation_post_process.max_val)
        assert torch.equal(scale, mod.scale) and torch.equal(zero_point, mod.zero_point)


def test_fused_module_equals_observer_plus_fake_quant_bit_for_bit():
    # the contract: fused == FakeQuantize(MovingAverageMinMaxObserver) composed, exactly
    fused = FusedMovingAvgObsFakeQuantize()
    composed = FakeQuantize(MovingAverageMinMaxObserver, quant_min=0, quant_max=255)
    for i in range(10):
        x = torch.randn(5, 5) * (1 + i)
        assert torch.equal(fused(x), composed(x))
        assert torch.equal(fused.scale, composed.scale)
        assert torch.equal(fused.zero_point, composed.zero_point)
        assert torch.equal(
            fused.activation_post_process.min_val, composed.activation_post_process.min_val
        )
        assert torch.equal(
            fused.activation_post_process.max_val, composed.activation_post_process.max_val
        )


def test_fused_per_channel_module_equals_composed_modules_bit_for_bit():
    kwargs = dict(
        observer=MovingAveragePerChannelMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
    )
    fused, composed = FusedMovingAvgObsFakeQuantize(**kwargs), FakeQuantize(**kwargs)
    for _ in range(5):
        x = torch.randn(4, 9)
        assert torch.equal(fused(x), composed(x))
        assert torch.equal(fused.scale, composed.scale)


@requires_torch_fused_op
def test_scripted_fused_per_channel_module_matches_torch_fused_op():
    m, n = 5, 10
    running_min, running_max, scale, zero_point = _torch_fused_state(m)
    mod = FusedMovingAvgObsFakeQuantize.with_args(
        averaging_constant=0.001, observer=MovingAveragePerChannelMinMaxObserver
    )()
    mod = _script(mod)
    for i in range(10):
        x = torch.randn(m, n)
        if i > 2:
            mod.observer_enabled[0] = 1
        if i > 4:
            mod.fake_quant_enabled[0] = 1
        out = mod(x)
        out_ref = torch.fused_moving_avg_obs_fake_quant(
            x, mod.observer_enabled, mod.fake_quant_enabled, running_min, running_max, scale,
            zero_point, 0.001, 0, 255, 0, True, False,
        )  # fmt: skip
        torch.testing.assert_close(out, out_ref)
        torch.testing.assert_close(running_min, mod.activation_post_process.min_val)
        torch.testing.assert_close(running_max, mod.activation_post_process.max_val)
        torch.testing.assert_close(scale, mod.scale)
        assert torch.equal(zero_point, mod.zero_point)
    state = mod.state_dict()
    assert torch.equal(state["activation_post_process.min_val"], running_min)
    assert torch.equal(state["activation_post_process.max_val"], running_max)


def test_fused_module_reduce_range_halves_the_activation_range():
    fq = FusedMovingAvgObsFakeQuantize(
        quant_min=0, quant_max=255, dtype=torch.quint8, reduce_range=True
    )
    assert fq.activation_post_process.quant_min == 0
    assert fq.activation_post_process.quant_max == 127


def test_fused_module_rejects_a_non_moving_average_observer():
    with pytest.raises(ValueError, match=r"^observer"):
        FusedMovingAvgObsFakeQuantize(observer=MinMaxObserver)


def test_fused_module_loads_state_dict_on_the_target_device():
    source = FusedMovingAvgObsFakeQuantize()
    source(torch.randn(4, 4))
    target = FusedMovingAvgObsFakeQuantize().to("meta")
    with warnings.catch_warnings():
        # torch notes that copying into meta tensors is a no-op: exactly what is tested here
        warnings.filterwarnings(
            "ignore", message="for .*: copying from a non-meta", category=UserWarning
        )
        target.load_state_dict(source.state_dict())
    assert {b.device for b in target.buffers()} == {torch.device("meta")}


# --------------------------------------------------------------------------------------------
# FixedQParamsFakeQuantize
# --------------------------------------------------------------------------------------------


def test_fixed_qparams_fake_quant_uses_its_fixed_qparams_whatever_it_sees():
    fq = default_fixed_qparams_range_0to1_fake_quant()
    x = torch.tensor([-0.5, 0.0, 0.3, 0.999, 2.0])
    # scale 1/256 over [0, 255]: values clamp to [0, 255/256]
    expected = torch.clamp(torch.round(x * 256), 0, 255) / 256
    assert torch.equal(fq(x), expected)
    assert fq.scale.tolist() == [1 / 256] and fq.zero_point.tolist() == [0]


def test_fixed_qparams_fake_quant_is_scriptable():
    fq = FixedQParamsFakeQuantize(FixedQParamsObserver.with_args(scale=2 / 256, zero_point=128))
    scripted = _script(fq)
    x = torch.linspace(-1.5, 1.5, 11)
    assert torch.equal(scripted(x), fq(x))


def test_fixed_qparams_fake_quant_needs_a_fixed_qparams_observer():
    with pytest.raises(ValueError, match=r"^observer"):
        FixedQParamsFakeQuantize(MovingAverageMinMaxObserver)
