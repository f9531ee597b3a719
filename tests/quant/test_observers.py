"""Observers: the behaviours of seed 002 (torch's observer tests) against qbc's API, plus
differential tests against torch.ao's observers on the same data."""

import io
import warnings
from collections import OrderedDict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from quant_support import requires_torch_ao

from harness.compat import expected_torch_deprecations
from harness.quant import primitives as P
from harness.quant.fake_quantize import FakeQuantize
from harness.quant.observers import (
    FixedQParamsObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    NoopObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
    RecordingObserver,
    load_observer_state_dict,
)
from harness.quant.qconfig import default_debug_qconfig, default_histogram_observer

SETTINGS = settings(deadline=None, max_examples=20)
RANGE_OBSERVERS = [
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
]


requires_torch_choose_qparams = pytest.mark.skipif(
    not hasattr(torch, "_choose_qparams_per_tensor"),
    reason=f"torch {torch.__version__} has no _choose_qparams_per_tensor",
)


def _script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    with expected_torch_deprecations():
        return torch.jit.script(module)


def _save_load_scripted(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    buf = io.BytesIO()
    with expected_torch_deprecations():
        torch.jit.save(module, buf)
        buf.seek(0)
        return torch.jit.load(buf)


def _torch_ao(name: str, **kwargs):
    """torch.ao's observer of the same name, built under its expected deprecation warnings
    (it also warns about reduce_range, which is silenced here on purpose)."""
    import torch.ao.quantization.observer as tobs

    with expected_torch_deprecations():
        return getattr(tobs, name)(**kwargs)


def _torch_ao_call(fn, *args):
    with expected_torch_deprecations(), warnings.catch_warnings():
        # torch.ao warns "must run observer before calling calculate_qparams" etc.
        warnings.filterwarnings("ignore", message="must run observer", category=UserWarning)
        return fn(*args)


# --------------------------------------------------------------------------------------------
# TorchScript
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [MinMaxObserver, MovingAverageMinMaxObserver])
def test_observer_is_scriptable_and_survives_save_load(cls):
    obs = cls()
    scripted = _script(obs)
    x = torch.rand(3, 4)
    obs(x)
    scripted(x)
    for ours, theirs in zip(obs.calculate_qparams(), scripted.calculate_qparams(), strict=True):
        assert torch.equal(ours, theirs)
    loaded = _save_load_scripted(scripted)
    for ours, theirs in zip(obs.calculate_qparams(), loaded.calculate_qparams(), strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("cls", [*RANGE_OBSERVERS, HistogramObserver])
def test_scripted_observer_computes_the_same_qparams_as_eager(cls):
    eager, scripted_src = cls(), cls()
    scripted = _script(scripted_src)
    for _ in range(3):
        x = torch.randn(4, 6)
        eager(x)
        scripted(x)
    for ours, theirs in zip(eager.calculate_qparams(), scripted.calculate_qparams(), strict=True):
        assert torch.equal(ours, theirs)


@given(
    qdtype=st.sampled_from((torch.qint8, torch.quint8, torch.qint32)),
    qscheme=st.sampled_from((torch.per_tensor_affine, torch.per_tensor_symmetric)),
    reduce_range=st.booleans(),
)
@SETTINGS
def test_per_tensor_observers_are_scriptable_for_every_configuration(qdtype, qscheme, reduce_range):
    if qscheme == torch.per_tensor_symmetric and reduce_range and qdtype == torch.quint8:
        return  # rejected: the symmetric uint8 zero point 128 does not fit [0, 127]
    for cls in (MinMaxObserver, MovingAverageMinMaxObserver):
        obs = cls(dtype=qdtype, qscheme=qscheme, reduce_range=reduce_range)
        scripted = _script(cls(dtype=qdtype, qscheme=qscheme, reduce_range=reduce_range))
        x = torch.rand(3, 4)
        obs(x)
        scripted(x)
        for a, b in zip(obs.calculate_qparams(), scripted.calculate_qparams(), strict=True):
            assert torch.equal(a, b)


@given(
    qdtype=st.sampled_from((torch.qint8, torch.quint8)),
    qscheme=st.sampled_from(
        (
            torch.per_channel_affine,
            torch.per_channel_symmetric,
            torch.per_channel_affine_float_qparams,
        )
    ),
    ch_axis=st.sampled_from((0, 1, 2, 3)),
    reduce_range=st.booleans(),
)
@SETTINGS
def test_per_channel_observers_are_scriptable_for_every_configuration(
    qdtype, qscheme, ch_axis, reduce_range
):
    if qscheme == torch.per_channel_symmetric and reduce_range and qdtype == torch.quint8:
        return  # rejected: the symmetric uint8 zero point 128 does not fit [0, 127]
    kwargs = dict(dtype=qdtype, qscheme=qscheme, ch_axis=ch_axis, reduce_range=reduce_range)
    for cls in (PerChannelMinMaxObserver, MovingAveragePerChannelMinMaxObserver):
        obs, scripted = cls(**kwargs), _script(cls(**kwargs))
        x = torch.randn(2, 3, 4, 5)
        obs(x)
        scripted(x)
        for a, b in zip(obs.calculate_qparams(), scripted.calculate_qparams(), strict=True):
            assert torch.equal(a, b)
            assert a.shape == (x.shape[ch_axis],)


@pytest.mark.parametrize("qdtype", [torch.qint8, torch.quint8])
def test_recording_observer_is_scriptable_and_survives_save_load(qdtype):
    obs = RecordingObserver(dtype=qdtype)
    scripted = _script(obs)
    x = torch.rand(3, 4)
    obs(x)
    scripted(x)
    assert torch.equal(obs.get_tensor_value()[0], scripted.get_tensor_value()[0])
    loaded = _save_load_scripted(scripted)
    assert torch.equal(obs.get_tensor_value()[0], loaded.get_tensor_value()[0])


@pytest.mark.parametrize("qdtype", [torch.qint8, torch.quint8])
@pytest.mark.parametrize("qscheme", [torch.per_tensor_affine, torch.per_tensor_symmetric])
def test_histogram_observer_is_scriptable(qdtype, qscheme):
    for obs in (HistogramObserver(dtype=qdtype, qscheme=qscheme), default_histogram_observer()):
        scripted = _script(obs)
        x = torch.rand(3, 4)
        obs(x)
        scripted(x)
        assert torch.equal(obs.histogram, scripted.histogram)
        loaded = _save_load_scripted(scripted)
        assert torch.equal(obs.histogram, loaded.histogram)


@pytest.mark.parametrize("cls", [MinMaxObserver, MovingAverageMinMaxObserver, HistogramObserver])
def test_scripted_observer_state_dict_loads_into_another_scripted_observer(cls):
    # seed: observer statistics saved from one scripted model load into a fresh scripted one
    first = _script(cls())
    first(torch.rand(5, 5))
    second = _script(cls())
    second.load_state_dict(first.state_dict())
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


@pytest.mark.parametrize("cls", [PerChannelMinMaxObserver, MovingAveragePerChannelMinMaxObserver])
def test_scripted_per_channel_observer_loads_statistics_with_load_observer_state_dict(cls):
    # TorchScript bypasses the eager resize in _load_from_state_dict (torch.ao has the same
    # limit and the same kind of helper); the helper resizes the empty buffers first
    observed = _script(cls())
    observed(torch.randn(4, 3))
    fresh = _script(cls())
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(observed.state_dict())
    load_observer_state_dict(fresh, observed.state_dict())
    assert torch.equal(fresh.min_val, observed.min_val)
    for a, b in zip(fresh.calculate_qparams(), observed.calculate_qparams(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "obs",
    [PlaceholderObserver(), NoopObserver(), FixedQParamsObserver(1.0 / 256, 0)],
    ids=["placeholder", "noop", "fixed"],
)
def test_pass_through_observers_are_scriptable(obs):
    scripted = _script(obs)
    x = torch.randn(3)
    assert torch.equal(scripted(x), x)


# --------------------------------------------------------------------------------------------
# state_dict
# --------------------------------------------------------------------------------------------

DEVICE_AFFINITY_CLASSES = [
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    HistogramObserver,
    PlaceholderObserver,
    RecordingObserver,
    NoopObserver,
    FakeQuantize,
]


@pytest.mark.parametrize("cls", DEVICE_AFFINITY_CLASSES)
def test_state_dict_loading_keeps_buffers_on_the_target_device(cls):
    # The seed does cpu <-> cuda; this machine has no GPU, so the target lives on the "meta"
    # device: a loader that replaced buffers with the loaded (cpu) tensors would show up here.
    source = cls()
    source(torch.randn(4, 1, 4, 4))
    target = cls().to("meta")
    with warnings.catch_warnings():
        # torch notes that copying into meta tensors is a no-op: exactly what is being tested
        warnings.filterwarnings(
            "ignore", message="for .*: copying from a non-meta", category=UserWarning
        )
        target.load_state_dict(source.state_dict())
    devices = {t.device for t in target.parameters()} | {t.device for t in target.buffers()}
    assert devices <= {torch.device("meta")}


@pytest.mark.parametrize("cls", [PerChannelMinMaxObserver, MovingAveragePerChannelMinMaxObserver])
def test_per_channel_observer_loads_state_dict_of_an_observed_model(cls):
    obs = cls()
    obs(torch.randn(32, 32))
    new_obs = cls()
    new_obs.load_state_dict(obs.state_dict())
    assert torch.equal(obs.min_val, new_obs.min_val)
    assert torch.equal(obs.max_val, new_obs.max_val)


@pytest.mark.parametrize("cls", [PerChannelMinMaxObserver, MovingAveragePerChannelMinMaxObserver])
def test_per_channel_observer_loads_state_dict_with_a_different_channel_count(cls):
    obs16 = cls()
    obs16(torch.randn(16, 3))
    obs32 = cls()
    obs32(torch.randn(32, 3))
    obs32.load_state_dict(obs16.state_dict())
    assert obs32.min_val.shape == (16,)
    assert torch.equal(obs32.min_val, obs16.min_val)
    assert torch.equal(obs32.calculate_qparams()[0], obs16.calculate_qparams()[0])


def _with_version(state: dict, version: int) -> OrderedDict:
    """A state_dict as an older release wrote it: load_state_dict reads ``_metadata``."""
    old = OrderedDict(state)
    old._metadata = {"": {"version": version}}  # type: ignore[attr-defined]
    return old


def test_per_channel_observer_loads_version_2_buffer_names():
    # state_dict version 2 called the buffers min_vals / max_vals
    obs = PerChannelMinMaxObserver()
    obs(torch.randn(4, 3))
    state = {"min_vals": obs.min_val.clone(), "max_vals": obs.max_val.clone(), "eps": obs.eps}
    fresh = PerChannelMinMaxObserver()
    fresh.load_state_dict(_with_version(state, 2))
    assert torch.equal(fresh.min_val, obs.min_val)
    assert torch.equal(fresh.max_val, obs.max_val)


def test_version_1_state_dict_without_eps_loads_with_the_default_eps():
    # version 1 had no eps buffer; it was always float32 machine epsilon
    obs = MinMaxObserver(eps=1e-3)
    state = {"min_val": torch.tensor(-1.0), "max_val": torch.tensor(1.0)}
    obs.load_state_dict(_with_version(state, 1))
    assert obs.eps.item() == pytest.approx(torch.finfo(torch.float32).eps)
    assert obs.max_val.item() == 1.0


def test_histogram_observer_state_dict_round_trip_keeps_scalar_min_max():
    obs1 = HistogramObserver()
    obs1(torch.randn(4, 4, 4, 4))
    obs2 = HistogramObserver()
    obs2.load_state_dict(obs1.state_dict())
    assert obs2.min_val.shape == torch.Size([])
    assert obs2.max_val.shape == torch.Size([])
    assert torch.equal(obs2.histogram, obs1.histogram)


def test_histogram_observer_refuses_a_state_dict_with_another_bin_count():
    small = HistogramObserver(bins=8)
    small(torch.randn(10))
    big = HistogramObserver(bins=16)
    with pytest.raises(RuntimeError, match="bins"):
        big.load_state_dict(small.state_dict())


def _buffer_ids(module: torch.nn.Module) -> list[int]:
    return [id(v) for v in module._buffers.values()]


@pytest.mark.parametrize(
    "ctor",
    [
        MinMaxObserver.with_args(dtype=torch.qint8),
        MovingAverageMinMaxObserver.with_args(dtype=torch.qint8),
        PerChannelMinMaxObserver.with_args(dtype=torch.qint8),
        MovingAveragePerChannelMinMaxObserver.with_args(dtype=torch.qint8),
        HistogramObserver.with_args(dtype=torch.qint8),
        RecordingObserver.with_args(dtype=torch.qint8),
        PlaceholderObserver.with_args(dtype=torch.float16),
    ],
    ids=repr,
)
def test_observers_modify_buffers_in_place(ctor):
    # nn.DataParallel replicas rely on buffers being updated in place, never replaced
    observer = ctor()
    before = _buffer_ids(observer)
    for _ in range(5):
        observer(torch.rand(4, 4, 4))
    assert _buffer_ids(observer) == before


# --------------------------------------------------------------------------------------------
# edge inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        PerChannelMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        HistogramObserver,
        FakeQuantize,
        lambda: FixedQParamsObserver(0.1, 0),
    ],
)
def test_zero_numel_input_passes_through_and_records_nothing(make):
    obs = make()
    before = {k: v.clone() for k, v in obs.state_dict().items()}
    x = torch.tensor([])
    assert obs(x).numel() == 0
    for key, value in obs.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("cls", [PerChannelMinMaxObserver, MovingAveragePerChannelMinMaxObserver])
def test_per_channel_observer_on_a_1d_tensor_has_one_channel_per_element(cls):
    # e.g. a bias vector: every element is its own channel
    obs = cls()
    x = torch.randn(5)
    obs(x)
    assert torch.equal(obs.min_val, x) and torch.equal(obs.max_val, x)
    assert obs.calculate_qparams()[0].shape == (5,)


@pytest.mark.parametrize("cls", RANGE_OBSERVERS)
def test_unobserved_observer_gives_neutral_qparams(cls):
    scale, zero_point = cls().calculate_qparams()
    assert scale.tolist() == [1.0] and zero_point.tolist() == [0]


@pytest.mark.parametrize("value", [0.0, 3.5, -1e-20, 7e5])
def test_constant_input_gives_valid_qparams_that_represent_it(value):
    # min == max: the range is widened to include 0, the scale floored at eps
    obs = MinMaxObserver(dtype=torch.qint8)
    x = torch.full((8,), value)
    obs(x)
    scale, zp = obs.calculate_qparams()
    assert scale.item() >= torch.finfo(torch.float32).eps
    q = P.quantize(x, scale, zp, torch.int8)
    assert bool(((P.dequantize(q, scale, zp) - x).abs() <= scale / 2 * (1 + 1e-6)).all())


def test_dynamic_observer_qparams_follow_the_latest_input():
    obs = MovingAverageMinMaxObserver(averaging_constant=1, is_dynamic=True)
    x = torch.randn(3, 3)
    obs(x)
    params = obs.calculate_qparams()
    for _ in range(20):
        obs(10 * torch.randn(3, 3))
        assert obs.calculate_qparams()[0].item() != pytest.approx(params[0].item(), rel=1e-3)
        obs(x)
        # min + 1 * (min(x) - min) is min(x) up to one rounding of the previous (10x larger)
        # extreme, as in torch.ao: |error| <= ulp(40) ~ 4e-6
        assert obs.min_val.item() == pytest.approx(x.min().item(), abs=1e-5)
        assert obs.max_val.item() == pytest.approx(x.max().item(), abs=1e-5)
        scale, zp = obs.calculate_qparams()
        assert scale.item() == pytest.approx(params[0].item(), rel=1e-4)
        assert abs(zp.item() - params[1].item()) <= 1


# With averaging_constant=1 a moving average is the latest batch up to one rounding:
# min = -2.5 + 1 * (0.7 - (-2.5)) = 0.70000005 while max = 1 + 1 * (0.7 - 1) = 0.69999999, so a
# constant batch after a wider one leaves min 1 ULP above max.
CROSSING_BATCHES = (torch.tensor([-2.5, 1.0]), torch.full((3,), 0.7))


@pytest.mark.parametrize("is_dynamic", [False, True])
def test_averaging_constant_one_observer_survives_min_and_max_crossing_by_rounding(is_dynamic):
    obs = MovingAverageMinMaxObserver(averaging_constant=1.0, is_dynamic=is_dynamic)
    for x in CROSSING_BATCHES:
        obs(x)
    assert obs.min_val > obs.max_val  # the crossing this test is about
    # widened to include 0 the range is [0, 0.7]: the qparams of the latest batch
    expected = P.choose_qparams(torch.tensor(0.0), torch.tensor(0.7))
    for got, want in zip(obs.calculate_qparams(), expected, strict=True):
        assert torch.equal(got, want)


def test_averaging_constant_one_per_channel_float_qparams_survive_a_crossing_row():
    # the embedding QAT observer: per row, float qparams, averaging constant 1
    obs = MovingAveragePerChannelMinMaxObserver(
        averaging_constant=1.0, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0
    )
    for x in CROSSING_BATCHES:
        obs(x.reshape(1, -1))
    scale, zero_point = obs.calculate_qparams()
    # a crossed (empty) range takes the degenerate path: scale 1, zero point -min
    assert scale.tolist() == [1.0] and zero_point.item() == pytest.approx(-0.7)


def test_choose_qparams_still_rejects_a_range_with_min_above_max():
    with pytest.raises(ValueError, match=r"^min_val:"):
        P.choose_qparams(torch.tensor(1.0), torch.tensor(-1.0))


@requires_torch_choose_qparams
@pytest.mark.parametrize("shape", [(3, 3), (3, 3, 3), (3, 3, 3, 3)])
def test_dynamic_observer_matches_torch_choose_qparams_per_tensor(shape):
    obs = MovingAverageMinMaxObserver(averaging_constant=1, is_dynamic=True)
    x = torch.randn(shape)
    obs(x)
    scale, zero_point = obs.calculate_qparams()
    ref_scale, ref_zero_point = torch._choose_qparams_per_tensor(x)
    # torch returns the scale as a double; ours is its float32 rounding
    assert scale.item() == pytest.approx(ref_scale, rel=2**-23)
    assert zero_point.item() == ref_zero_point


# --------------------------------------------------------------------------------------------
# HistogramObserver
# --------------------------------------------------------------------------------------------


def test_histogram_observer_buffer_shapes_do_not_change_when_observing():
    obs = HistogramObserver()
    shapes = obs.min_val.shape, obs.max_val.shape
    for _ in range(2):
        obs(torch.randn(4, 4, 4, 4))
    assert (obs.min_val.shape, obs.max_val.shape) == shapes


def test_histogram_observer_ignores_infinite_values():
    obs, clean = HistogramObserver(), HistogramObserver()
    x = torch.randn(4, 4, 4, 4)
    obs(x * torch.inf)  # every element +-inf: nothing to record
    obs(x)
    clean(x)
    obs(x * torch.inf)
    assert obs.min_val.item() != -torch.inf and obs.max_val.item() != torch.inf
    assert torch.equal(obs.histogram, clean.histogram)


@pytest.mark.parametrize("sign", [-1, 1])
def test_histogram_observer_handles_values_close_to_float_max(sign):
    # a softmax mask: one huge value and zeros; quantizing it must keep the mask effective
    obs = HistogramObserver.with_args(reduce_range=False)()
    mask = torch.tensor([-3.4028234663852886 * 10**30, 0, 0, 0]) * sign
    obs(mask)
    obs(mask - sign)
    scale, zp = obs.calculate_qparams()
    x = torch.randn(1, 4)
    ref = torch.softmax(x + mask, dim=1)
    dq = P.dequantize(P.quantize(mask, scale, zp, torch.uint8), scale, zp)
    torch.testing.assert_close(torch.softmax(x + dq, dim=1), ref)


def test_min_max_observer_range_wider_than_float32_gives_a_finite_scale():
    # max - min = 6e38 overflows float32; torch.ao would return scale inf (and nan outputs)
    obs = MinMaxObserver()
    x = torch.tensor([-3e38, 0.0, 3e38])
    obs(x)
    scale, zp = obs.calculate_qparams()
    assert bool(torch.isfinite(scale).all())
    x2 = P.dequantize(P.quantize(x, scale, zp, torch.uint8), scale, zp)
    assert x2[1].item() == 0.0  # zero stays exactly representable
    # rounding the zero point (127.5 -> 128) shifts the grid by half a step, so the ends are
    # within one step, as for any affine range
    assert bool(((x2 - x).abs() <= scale * (1 + 1e-6)).all())


def test_histogram_observer_range_wider_than_float32_counts_everything():
    obs = HistogramObserver()
    x = torch.tensor([-3e38, 0.0, 1.0, 3e38])
    obs(x)
    obs(x * 0.5)  # same range after the first batch: merged, not re-binned
    obs(x * 0.25)
    assert obs.histogram.sum().item() == 12
    scale, zp = obs.calculate_qparams()
    assert bool(torch.isfinite(scale).all()) and 0 <= zp.item() <= 255


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_histogram_observer_accepts_half_precision_input(dtype):
    obs = HistogramObserver()
    obs(torch.randn(10).to(dtype))
    obs((torch.randn(10) * 3).to(dtype))
    assert obs.histogram.sum().item() == 20


def test_histogram_observer_close_min_max_then_wider_input():
    # the first range is 1e-9 wide: re-binning it onto [0, 3] must not blow up memory/time
    obs = HistogramObserver.with_args(reduce_range=False)()
    obs(torch.tensor([0, 1e-9]))
    obs(torch.tensor([2.0, 3.0]))
    assert obs.histogram.sum().item() == 4
    assert (obs.min_val.item(), obs.max_val.item()) == (0.0, 3.0)


def test_histogram_observer_huge_upsample_rate_runs_in_bins_memory():
    # 2048 bins * 64e6 sub-bins would need ~0.5 TB if materialised; the closed form needs O(bins)
    obs = HistogramObserver.with_args(upsample_rate=8000**2, reduce_range=False)()
    obs(torch.tensor([0, 1.0]))
    obs(torch.tensor([2, 2 + 1e-9]))
    assert obs.histogram.sum().item() == pytest.approx(4.0)
    scale, _ = obs.calculate_qparams()
    assert torch.isfinite(scale).all()


def test_histogram_closed_form_rebinning_is_the_limit_of_upsampling():
    # With 64 bins, rate 2**14 is still materialised (2**20 sub-bins); the closed form (rate ->
    # inf) must agree with it to within the sub-bin resolution: each new bin can differ by at
    # most the mass of ~2 sub-bins of an old bin, i.e. 2 * max(old) / rate.
    torch.manual_seed(1)
    data = [torch.randn(500), torch.randn(500) * 3 + 1]
    fine = HistogramObserver(bins=64, upsample_rate=2**14)
    exact = HistogramObserver(bins=64, upsample_rate=2**14)
    exact.max_upsampled_bins = 0  # force the closed form
    for x in data:
        fine(x)
        exact(x)
    first = HistogramObserver(bins=64)
    first(data[0])
    tolerance = 2 * first.histogram.max().item() / 2**14
    assert (fine.histogram - exact.histogram).abs().max().item() <= tolerance
    assert exact.histogram.sum().item() == pytest.approx(1000.0)


# every (dtype, qscheme, reduce_range) but symmetric uint8 with reduce_range, which is rejected
# (its zero point 128 would not fit [0, 127])
TINY_CONFIGS = [
    (d, q, r)
    for d in (torch.qint8, torch.quint8)
    for q in (torch.per_tensor_affine, torch.per_tensor_symmetric)
    for r in (False, True)
    if not (d == torch.quint8 and q == torch.per_tensor_symmetric and r)
]


@pytest.mark.parametrize(("qdtype", "qscheme", "reduce_range"), TINY_CONFIGS)
def test_histogram_observer_on_a_tiny_example(qdtype, qscheme, reduce_range):
    obs = HistogramObserver(bins=3, dtype=qdtype, qscheme=qscheme, reduce_range=reduce_range)
    assert obs.calculate_qparams()[0].tolist() == [1.0]  # nothing observed yet
    x = torch.tensor([2.0, 3.0, 4.0, 5.0], requires_grad=True)
    assert obs(x).requires_grad  # forward returns its input, autograd intact
    obs(torch.tensor([5.0, 6.0, 7.0, 8.0]))
    # range [2, 8] in 3 bins of width 2: {2,3}, {4,5}, {5,6,7,8} (8 closes the last bin)
    assert (obs.min_val.item(), obs.max_val.item()) == (2.0, 8.0)
    assert obs.histogram.tolist() == [2.0, 3.0, 3.0]
    scale, zp = obs.calculate_qparams()
    # The search clips the top bin: range [2, 6], widened to [0, 6]. Affine: scale 6/255 =
    # 0.0235294, zero point at quant_min; symmetric: 2*6/255 = 0.0470588, zero point 0 (int8) or
    # 128 (uint8). reduce_range has 127 steps instead of 255 (the seed's numbers).
    steps = 127 if reduce_range else 255
    if qscheme == torch.per_tensor_symmetric:
        ref_scale, ref_zp = 12 / steps, (0 if qdtype == torch.qint8 else 128)
    else:
        ref_scale = 6 / steps
        ref_zp = (-64 if reduce_range else -128) if qdtype == torch.qint8 else 0
    assert zp.item() == ref_zp
    assert scale.item() == pytest.approx(ref_scale, abs=1e-5)


@requires_torch_ao
@pytest.mark.parametrize(
    ("qdtype", "qscheme"),
    [(torch.qint8, torch.per_tensor_affine), (torch.quint8, torch.per_tensor_symmetric)],
)
def test_histogram_observer_on_a_tiny_example_is_bit_identical_to_torch_ao(qdtype, qscheme):
    # (torch.ao's tensor-indexed search takes ~1 s per call at 3 bins: two configurations)
    ours = HistogramObserver(bins=3, dtype=qdtype, qscheme=qscheme)
    theirs = _torch_ao("HistogramObserver", bins=3, dtype=qdtype, qscheme=qscheme)
    for x in (torch.tensor([2.0, 3.0, 4.0, 5.0]), torch.tensor([5.0, 6.0, 7.0, 8.0])):
        ours(x)
        theirs(x)
    for a, b in zip(ours.calculate_qparams(), theirs.calculate_qparams(), strict=True):
        assert torch.equal(a, b) and a.dtype == b.dtype


@pytest.mark.parametrize(("qdtype", "qscheme", "reduce_range"), TINY_CONFIGS)
def test_histogram_observer_state_dict_survives_torch_save_and_load(qdtype, qscheme, reduce_range):
    kwargs = dict(bins=3, dtype=qdtype, qscheme=qscheme, reduce_range=reduce_range)
    obs = HistogramObserver(**kwargs)
    obs(torch.tensor([2.0, 3.0, 4.0, 5.0]))
    obs(torch.tensor([5.0, 6.0, 7.0, 8.0]))
    buf = io.BytesIO()
    torch.save(obs.state_dict(), buf)
    buf.seek(0)
    loaded_dict = torch.load(buf)
    for key, value in obs.state_dict().items():
        assert torch.equal(value, loaded_dict[key])
    loaded = HistogramObserver(**kwargs)
    loaded.load_state_dict(loaded_dict)
    assert torch.equal(loaded.histogram, obs.histogram)
    assert loaded.bins == obs.bins
    for a, b in zip(obs.calculate_qparams(), loaded.calculate_qparams(), strict=True):
        assert torch.equal(a, b)


def test_histogram_observer_one_sided_input_has_zero_point_at_quant_min():
    obs = HistogramObserver(bins=8, dtype=torch.quint8, reduce_range=True)
    obs(torch.tensor([0.0, 0.3, 1.2, 1.7]))
    obs(torch.tensor([0.1, 1.3, 2.0, 2.7]))
    assert obs.min_val.item() == 0
    assert obs.calculate_qparams()[1].item() == 0


def test_histogram_observer_restarts_after_single_point_ranges():
    # Seed behaviour: constant batches (a single-point range) are replaced by the next batch
    # instead of being merged into a zero-width histogram. (torch 2.13's own observer merges
    # them, ending with min 0 and 16 counts here; see the module docstring.)
    obs = HistogramObserver(bins=3, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    obs(torch.ones(4, requires_grad=True))
    obs(torch.zeros(4, requires_grad=True))
    obs(torch.zeros(4, requires_grad=True))
    obs(torch.tensor([2.0, 3.0, 4.0, 5.0], requires_grad=True))
    obs(torch.tensor([5.0, 6.0, 7.0, 8.0]))
    obs.calculate_qparams()
    assert (obs.min_val.item(), obs.max_val.item()) == (2.0, 8.0)
    assert obs.histogram.tolist() == [2.0, 3.0, 3.0]


def test_scripted_histogram_search_makes_the_same_choice_as_eager():
    # eager runs the bin search on Python floats, TorchScript on tensors: same clipped range
    eager = HistogramObserver(bins=3)
    scripted = _script(HistogramObserver(bins=3))
    for x in (torch.tensor([2.0, 3.0, 4.0, 5.0]), torch.tensor([5.0, 6.0, 7.0, 8.0])):
        eager(x)
        scripted(x)
    for a, b in zip(eager.calculate_qparams(), scripted.calculate_qparams(), strict=True):
        assert torch.equal(a, b)


def test_histogram_observer_extreme_subnormal_inputs_do_not_crash():
    obs = HistogramObserver()
    x = torch.tensor([0.0, 0.0, 4.58e-41, 4.58e-41])
    obs(x)  # initialises the range
    obs(x)  # merges into the same range
    assert obs.histogram.sum().item() == 8


@pytest.mark.parametrize("n", range(1, 10))
def test_histogram_counts_every_element_once(n):
    obs = HistogramObserver()
    obs(torch.randn(n, n))
    assert obs.histogram.sum().item() == n * n


@requires_torch_ao
@pytest.mark.parametrize(
    ("n", "bins", "dtype", "qscheme", "reduce_range"),
    [
        (10, 256, torch.qint8, torch.per_tensor_affine, False),
        (1000, 512, torch.quint8, torch.per_tensor_affine, True),
        (1000, 1024, torch.qint8, torch.per_tensor_symmetric, True),
        (10, 2048, torch.quint8, torch.per_tensor_symmetric, False),
        (1000, 2048, torch.qint8, torch.per_tensor_affine, True),
    ],
)
def test_histogram_observer_is_identical_to_torch_ao(n, bins, dtype, qscheme, reduce_range):
    ours = HistogramObserver(bins=bins, dtype=dtype, qscheme=qscheme, reduce_range=reduce_range)
    theirs = _torch_ao(
        "HistogramObserver", bins=bins, dtype=dtype, qscheme=qscheme, reduce_range=reduce_range
    )
    for i in range(10):
        x = torch.randn(n) * (1 + i / 3)  # widening ranges exercise the re-binning
        ours(x)
        theirs(x)
        assert torch.equal(ours.histogram, theirs.histogram)
        assert torch.equal(ours.min_val, theirs.min_val)
        assert torch.equal(ours.max_val, theirs.max_val)
    for i in range(0, bins, 200):
        for j in range(i + 5, bins, 200):
            assert ours._compute_quantization_error(i, j) == theirs._compute_quantization_error(
                i, j
            )
    for a, b in zip(ours.calculate_qparams(), theirs.calculate_qparams(), strict=True):
        assert torch.equal(a, b) and a.dtype == b.dtype


# --------------------------------------------------------------------------------------------
# differential: range observers vs torch.ao
# --------------------------------------------------------------------------------------------


@st.composite
def observer_config(draw):
    name = draw(
        st.sampled_from(
            [
                "MinMaxObserver",
                "MovingAverageMinMaxObserver",
                "PerChannelMinMaxObserver",
                "MovingAveragePerChannelMinMaxObserver",
            ]
        )
    )
    per_channel = "PerChannel" in name
    schemes = (
        [torch.per_channel_affine, torch.per_channel_symmetric]
        if per_channel
        else [torch.per_tensor_affine, torch.per_tensor_symmetric]
    )
    dtype = draw(st.sampled_from([torch.quint8, torch.qint8]))
    kwargs = dict(dtype=dtype, qscheme=draw(st.sampled_from(schemes)))
    kwargs["reduce_range"] = draw(st.booleans())
    if kwargs["qscheme"] in P.SYMMETRIC_SCHEMES and dtype == torch.quint8:
        kwargs["reduce_range"] = False
    if draw(st.booleans()):
        kwargs["quant_min"], kwargs["quant_max"] = (0, 100) if dtype == torch.quint8 else (-50, 60)
    if per_channel:
        kwargs["ch_axis"] = draw(st.integers(-3, 2))
    if "MovingAverage" in name:
        kwargs["averaging_constant"] = draw(st.sampled_from([0.01, 0.5, 1.0]))
    return name, kwargs


@requires_torch_ao
@given(config=observer_config(), seed=st.integers(0, 2**31 - 1))
@SETTINGS
def test_range_observers_give_the_same_qparams_as_torch_ao(config, seed):
    import harness.quant.observers as ours_module

    name, kwargs = config
    ours = getattr(ours_module, name)(**kwargs)
    theirs = _torch_ao(name, **kwargs)
    g = torch.Generator().manual_seed(seed)
    for i in range(4):
        x = torch.randn(3, 4, 5, generator=g) * (i + 1) + i
        ours(x)
        theirs(x)
    assert torch.equal(ours.min_val, theirs.min_val)
    assert torch.equal(ours.max_val, theirs.max_val)
    assert (ours.quant_min, ours.quant_max) == (theirs.quant_min, theirs.quant_max)
    for a, b in zip(ours.calculate_qparams(), theirs.calculate_qparams(), strict=True):
        assert torch.equal(a, b) and a.dtype == b.dtype


@requires_torch_ao
def test_float_qparams_observer_matches_torch_ao_for_embeddings():
    kwargs = dict(dtype=torch.quint8, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0)
    ours = PerChannelMinMaxObserver(**kwargs)
    theirs = _torch_ao("PerChannelMinMaxObserver", **kwargs)
    w = torch.randn(10, 12) + 0.5
    ours(w)
    theirs(w)
    for a, b in zip(ours.calculate_qparams(), theirs.calculate_qparams(), strict=True):
        assert torch.equal(a, b) and a.dtype == b.dtype == a.dtype


# --------------------------------------------------------------------------------------------
# API and bad arguments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_symmetric_float8_observer_scales_the_largest_magnitude_to_the_float8_maximum(dtype):
    # scale-only float8: s = max|x| / fmax, zero point 0, so nothing saturates
    obs = MinMaxObserver(dtype=dtype, qscheme=torch.per_tensor_symmetric)
    x = torch.randn(100) * 5
    obs(x)
    scale, zp = obs.calculate_qparams()
    fmax = torch.finfo(dtype).max
    assert scale.item() == pytest.approx(x.abs().max().item() / fmax, rel=1e-6)
    assert zp.tolist() == [0]
    q = P.quantize(x, scale, zp, dtype)
    assert q.to(torch.float32).abs().max().item() <= fmax


def test_with_args_builds_fresh_instances_with_bound_arguments():
    ctor = MinMaxObserver.with_args(dtype=torch.qint8).with_args(quant_min=-10, quant_max=10)
    a, b = ctor(), ctor()
    assert a is not b
    assert (a.dtype, a.quant_min, a.quant_max) == (torch.int8, -10, 10)


def test_legacy_quantized_dtypes_map_to_plain_dtypes():
    assert MinMaxObserver(dtype=torch.quint8).dtype == torch.uint8
    assert MinMaxObserver(dtype=torch.qint8).dtype == torch.int8
    assert MinMaxObserver(dtype=torch.qint32).dtype == torch.int32


def test_reduce_range_is_silent():
    # torch.ao warns that reduce_range is deprecated; a warning from qbc would be a bug
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert MinMaxObserver(reduce_range=True).quant_max == 127


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: MinMaxObserver(qscheme=torch.per_channel_affine), "qscheme"),
        (lambda: PerChannelMinMaxObserver(qscheme=torch.per_tensor_affine), "qscheme"),
        (lambda: HistogramObserver(qscheme=torch.per_channel_symmetric), "qscheme"),
        (lambda: MinMaxObserver(quant_min=5, quant_max=5), "quant_min"),
        (lambda: MinMaxObserver(quant_min=10, quant_max=100), "quant_min/quant_max"),
        (lambda: MinMaxObserver(quant_min=0), "quant_min/quant_max"),
        (lambda: MinMaxObserver(dtype=torch.qint8, quant_min=-200, quant_max=0), "quant_min"),
        (lambda: MinMaxObserver(dtype=torch.float32), "dtype"),
        (lambda: MinMaxObserver(eps=0.0), "eps"),
        (lambda: MinMaxObserver(bogus=1), "bogus"),
        (lambda: MovingAverageMinMaxObserver(averaging_constant=0), "averaging_constant"),
        (
            lambda: MovingAverageMinMaxObserver(averaging_constant=0.5, is_dynamic=True),
            "averaging_constant",
        ),
        (
            lambda: MinMaxObserver(qscheme=torch.per_tensor_symmetric, reduce_range=True),
            "reduce_range",
        ),
        (lambda: HistogramObserver(bins=0), "bins"),
        (lambda: HistogramObserver(upsample_rate=0), "upsample_rate"),
        (lambda: HistogramObserver(is_dynamic=True), "is_dynamic"),
        (lambda: FixedQParamsObserver(0.0, 0), "scale"),
        (lambda: FixedQParamsObserver(0.1, 300), "zero_point"),
        (lambda: PerChannelMinMaxObserver(ch_axis=3)(torch.randn(2, 2)), "ch_axis"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(make, argument):
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        make()


def test_recording_observer_keeps_a_copy_of_every_tensor_in_order():
    # seed: a debug qconfig records each calibration batch (twice through the data -> 2x)
    obs = default_debug_qconfig.activation()
    batches = [torch.randn(2, 3) for _ in range(4)]
    for x in batches + batches:
        assert obs(x) is x
    recorded = obs.get_tensor_value()
    assert len(recorded) == 2 * len(batches)
    assert all(torch.equal(r, x) for r, x in zip(recorded, batches + batches, strict=True))
    batches[0].add_(1)  # copies, not aliases: later changes to the input do not leak in
    assert not torch.equal(recorded[0], batches[0])


@pytest.mark.parametrize(
    "obs", [PlaceholderObserver(), RecordingObserver(), NoopObserver()], ids=type
)
def test_observers_without_qparams_refuse_to_compute_them(obs):
    with pytest.raises(RuntimeError, match="calculate_qparams"):
        obs.calculate_qparams()


def test_fixed_qparams_observer_returns_its_qparams_whatever_it_sees():
    obs = FixedQParamsObserver(scale=1.0 / 256, zero_point=0)
    obs(torch.randn(10) * 100)
    scale, zp = obs.calculate_qparams()
    assert scale.tolist() == [1.0 / 256] and zp.tolist() == [0] and zp.dtype == torch.int32
