"""QConfigs: per-engine defaults, QAT/dynamic/embedding configs, and agreement with torch.ao's
configs of the same name (same observer classes and settings, same qparams on the same data)."""

import warnings

import pytest
import torch
from quant_support import requires_torch_ao

from harness.compat import expected_torch_deprecations
from harness.quant import qconfig as Q
from harness.quant.fake_quantize import FakeQuantize, FusedMovingAvgObsFakeQuantize
from harness.quant.observers import (
    HistogramObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    NoopObserver,
    PlaceholderObserver,
)

NATIVE = ["fbgemm", "x86", "qnnpack", "onednn"]


def _torch_ao_qconfig(getter: str, *args):
    import torch.ao.quantization as tq

    with expected_torch_deprecations(), warnings.catch_warnings():
        # torch warns that onednn without VNNI may lose accuracy: a torch-side remark
        warnings.filterwarnings("ignore", message="Default qconfig of oneDNN", category=UserWarning)
        return getattr(tq, getter)(*args)


def _build_torch(ctor):
    with expected_torch_deprecations(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Please use quant_min", category=UserWarning)
        return ctor()


def _settings(module) -> dict:
    """What identifies an observer or fake-quant's behaviour (dtype as a plain dtype)."""
    from harness.quant.primitives import as_plain_dtype

    inner = getattr(module, "activation_post_process", None)
    obs = inner if inner is not None else module
    dtype = obs.dtype
    if not (dtype.is_floating_point and dtype not in (torch.float8_e4m3fn, torch.float8_e5m2)):
        dtype = as_plain_dtype(dtype)
    out = {
        "class": type(module).__name__,
        "observer": type(obs).__name__,
        "dtype": dtype,
        "qscheme": getattr(obs, "qscheme", None),
        "quant_min": getattr(obs, "quant_min", None),
        "quant_max": getattr(obs, "quant_max", None),
        "is_dynamic": getattr(obs, "is_dynamic", None),
        "ch_axis": getattr(obs, "ch_axis", None),
        "averaging_constant": getattr(obs, "averaging_constant", None),
    }
    eps = getattr(obs, "eps", None)
    out["eps"] = float(eps) if isinstance(eps, torch.Tensor | float) else None
    return out


def _assert_same_config(ours, theirs):
    for part in ("activation", "weight"):
        assert _settings(getattr(ours, part)()) == _settings(_build_torch(getattr(theirs, part)))


@requires_torch_ao
@pytest.mark.parametrize("engine", NATIVE)
def test_default_ptq_qconfig_matches_torch_ao(engine):
    _assert_same_config(
        Q.get_default_qconfig(engine), _torch_ao_qconfig("get_default_qconfig", engine)
    )


@requires_torch_ao
@pytest.mark.parametrize("engine", NATIVE)
@pytest.mark.parametrize("version", [0, 1])
def test_default_qat_qconfig_matches_torch_ao(engine, version):
    _assert_same_config(
        Q.get_default_qat_qconfig(engine, version),
        _torch_ao_qconfig("get_default_qat_qconfig", engine, version),
    )


@requires_torch_ao
@pytest.mark.parametrize(
    "name",
    [
        "default_qconfig",
        "default_per_channel_qconfig",
        "default_dynamic_qconfig",
        "per_channel_dynamic_qconfig",
        "float16_dynamic_qconfig",
        "float16_static_qconfig",
        "float_qparams_weight_only_qconfig",
        "float_qparams_weight_only_qconfig_4bit",
        "default_qat_qconfig",
        "default_qat_qconfig_v2",
        "default_dynamic_qat_qconfig",
        "default_embedding_qat_qconfig",
        "default_embedding_qat_qconfig_4bit",
        "default_symmetric_qnnpack_qconfig",
        "default_per_channel_symmetric_qnnpack_qconfig",
    ],
)
def test_named_qconfig_matches_torch_ao(name):
    import torch.ao.quantization.qconfig as tqc

    _assert_same_config(getattr(Q, name), getattr(tqc, name))


@requires_torch_ao
@pytest.mark.parametrize("engine", NATIVE)
def test_default_qconfig_observers_give_torch_ao_qparams_on_the_same_data(engine):
    ours, theirs = Q.get_default_qconfig(engine), _torch_ao_qconfig("get_default_qconfig", engine)
    act, act_t = ours.activation(), _build_torch(theirs.activation)
    wt, wt_t = ours.weight(), _build_torch(theirs.weight)
    for _ in range(3):
        x = torch.randn(16, 8)
        act(x)
        act_t(x)
    w = torch.randn(6, 8)
    wt(w)
    wt_t(w)
    for a, b in zip(act.calculate_qparams(), act_t.calculate_qparams(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(wt.calculate_qparams(), wt_t.calculate_qparams(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("engine", "quant_max", "weight_observer"),
    [
        # fbgemm: activations reduced to [0, 127]; weights per channel
        ("fbgemm", 127, MovingAveragePerChannelMinMaxObserver),
        # qnnpack: full [0, 255]; weights per tensor
        ("qnnpack", 255, MovingAverageMinMaxObserver),
    ],
)
def test_default_fused_qat_config(engine, quant_max, weight_observer):
    qconfig = Q.get_default_qat_qconfig(engine)
    act, weight = qconfig.activation(), qconfig.weight()
    assert type(act) is FusedMovingAvgObsFakeQuantize
    assert type(weight) is FusedMovingAvgObsFakeQuantize
    assert act.activation_post_process.quant_min == 0
    assert act.activation_post_process.quant_max == quant_max
    assert type(weight.activation_post_process) is weight_observer


@pytest.mark.parametrize(
    ("qconfig", "dtype", "quant_max"),
    [
        (Q.default_embedding_qat_qconfig, torch.uint8, 255),
        (Q.default_embedding_qat_qconfig_4bit, torch.uint4, 15),
    ],
)
def test_embedding_qat_config_fake_quantizes_rows_with_float_zero_points(qconfig, dtype, quant_max):
    act, weight_fq = qconfig.activation(), qconfig.weight()
    assert type(act) is NoopObserver and act.dtype == torch.float32
    assert type(weight_fq) is FakeQuantize
    table = torch.randn(10, 12)
    out = weight_fq(table)
    assert weight_fq.zero_point.dtype == torch.float32
    assert weight_fq.scale.shape == (10,)  # one (scale, zero point) per row
    assert (weight_fq.dtype, weight_fq.quant_min, weight_fq.quant_max) == (dtype, 0, quant_max)
    # each row spans its own [min, max] with quant_max steps: error at most half a step
    step = (table.amax(1) - table.amin(1)) / quant_max
    assert bool(((out - table).abs() <= step[:, None] / 2 * (1 + 1e-5) + 1e-7).all())


@pytest.mark.parametrize("bits", [8, 4])
def test_embedding_weight_only_config_uses_float_qparams(bits):
    qconfig = Q.get_embedding_qconfig(bits)
    obs = qconfig.weight()
    obs(torch.randn(5, 4))
    scale, zp = obs.calculate_qparams()
    assert obs.qscheme == torch.per_channel_affine_float_qparams
    assert zp.dtype == torch.float32 and scale.shape == (5,)
    assert obs.quant_max == (255 if bits == 8 else 15)
    assert qconfig.activation is PlaceholderObserver


@pytest.mark.parametrize("engine", ["reference", "int_mm"])
def test_exact_engines_use_full_range_activations_and_symmetric_per_channel_weights(engine):
    # exact int32 accumulation cannot overflow: no reduce_range; weight zero point 0 keeps the
    # weight side a plain int8 matrix for torch._int_mm
    ptq = Q.get_default_qconfig(engine)
    act, weight = ptq.activation(), ptq.weight()
    assert type(act) is HistogramObserver and (act.quant_min, act.quant_max) == (0, 255)
    assert weight.qscheme == torch.per_channel_symmetric and weight.dtype == torch.int8
    weight(torch.randn(4, 3))
    assert weight.calculate_qparams()[1].tolist() == [0, 0, 0, 0]
    qat = Q.get_default_qat_qconfig(engine)
    assert qat.activation().activation_post_process.quant_max == 255
    assert qat.weight().qscheme == torch.per_channel_symmetric


def test_reference_and_int_mm_share_one_config():
    # int_mm must be bit-identical to reference, so both quantize the same way
    ref, int_mm = Q.get_default_qconfig("reference"), Q.get_default_qconfig("int_mm")
    assert _settings(ref.activation()) == _settings(int_mm.activation())
    assert _settings(ref.weight()) == _settings(int_mm.weight())


@pytest.mark.parametrize("engine", Q.ENGINES)
def test_dynamic_qconfigs_for_int8_and_float16(engine):
    int8 = Q.get_default_dynamic_qconfig(engine)
    act = int8.activation()
    assert act.is_dynamic and act.dtype == torch.uint8
    assert int8.weight().dtype == torch.int8
    fp16 = Q.get_default_dynamic_qconfig(engine, torch.float16)
    assert fp16.activation().is_dynamic
    assert fp16.weight().dtype == torch.float16


def test_qconfig_builds_fresh_observers_for_every_module():
    qconfig = Q.get_default_qconfig("x86")
    assert qconfig.activation() is not qconfig.activation()


def test_qconfig_is_a_named_pair():
    qconfig = Q.QConfig(activation=HistogramObserver, weight=PlaceholderObserver)
    assert qconfig == (HistogramObserver, PlaceholderObserver)
    assert qconfig._fields == ("activation", "weight")


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (
            lambda: Q.QConfig(activation=HistogramObserver(), weight=PlaceholderObserver),
            "activation",
        ),
        (lambda: Q.QConfig(activation=HistogramObserver, weight=PlaceholderObserver()), "weight"),
        (lambda: Q.QConfig(activation=HistogramObserver, weight=3), "weight"),
        (lambda: Q.get_default_qconfig("tpu"), "engine"),
        (lambda: Q.get_default_qat_qconfig("tpu"), "engine"),
        (lambda: Q.get_default_qconfig("x86", version=1), "version"),
        (lambda: Q.get_default_qat_qconfig("x86", version=2), "version"),
        (lambda: Q.get_default_dynamic_qconfig("x86", torch.int32), "dtype"),
        (lambda: Q.get_embedding_qconfig(2), "bits"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(make, argument):
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        make()
