"""Quantization primitives: round-trip properties, saturation, layouts, float8, differential
tests against torch.ao and the ``quantized_decomposed`` ops, and argument validation."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from quant_support import requires_torch_ao

import harness.quant  # noqa: F401  (registers torch.ops.quantized_decomposed)
from harness.compat import expected_torch_deprecations
from harness.quant import decomposed
from harness.quant import primitives as P

SETTINGS = settings(deadline=None, max_examples=40)
INT_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32]
SEEDS = st.integers(0, 2**31 - 1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _roundtrip_bound(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``s/2`` plus float32 slack: ``x * (1/s)`` and ``(q - z) * s`` each round once (relative
    2**-24), which can move a value sitting on a rounding midpoint, so allow ~2**-21 * |x|."""
    return scale / 2 + 2.0**-21 * (x.abs() + scale)


@st.composite
def per_tensor_case(draw):
    dtype = draw(st.sampled_from(INT_DTYPES))
    lo, hi = P.dtype_bounds(dtype)
    # keep codes below 2**23 so float32 holds every code exactly (int32 has 2**32 of them)
    lo, hi = max(lo, -(2**22)), min(hi, 2**22)
    scale = draw(st.floats(1e-4, 1e3))
    zero_point = draw(st.integers(lo, hi))
    return dtype, lo, hi, scale, zero_point, draw(SEEDS)


@given(per_tensor_case())
@SETTINGS
def test_dequantize_of_quantize_is_within_half_a_step_inside_the_range(case):
    dtype, lo, hi, scale, zp, seed = case
    # x uniform over the representable range [(lo - z) s, (hi - z) s]
    u = torch.rand(257, generator=_gen(seed))
    x = ((lo - zp) + u * (hi - lo)) * scale
    q = P.quantize(x, scale, zp, dtype, lo, hi)
    x2 = P.dequantize(q, scale, zp)
    s = torch.tensor(scale)
    assert q.dtype == dtype
    assert bool(((x - x2).abs() <= _roundtrip_bound(x, s)).all())


@given(per_tensor_case())
@SETTINGS
def test_quantize_saturates_at_quant_min_and_quant_max(case):
    dtype, lo, hi, scale, zp, _ = case
    # 3 steps beyond each end of the range, and far beyond
    below = torch.tensor([(lo - zp - 3) * scale, -1e30])
    above = torch.tensor([(hi - zp + 3) * scale, 1e30])
    assert P.quantize(below, scale, zp, dtype, lo, hi).tolist() == [lo, lo]
    assert P.quantize(above, scale, zp, dtype, lo, hi).tolist() == [hi, hi]


# beyond the int32 range both ways, then two values inside it that float32 holds exactly
INT32_EDGES = [3e9, float("inf"), -3e9, float("-inf"), 1e6, -1048576.0]


@requires_torch_ao
@pytest.mark.parametrize("zero_point", [0, 5, -5])
def test_int32_quantize_saturates_like_torch_quantize_per_tensor(zero_point):
    # float32 cannot hold INT32_MAX: a float32 clamp to it gives 2**31, which the cast wraps to
    # INT32_MIN; out-of-range values must saturate at the exact bounds
    x = torch.tensor(INT32_EDGES)
    with expected_torch_deprecations():
        expected = torch.quantize_per_tensor(x, 1.0, zero_point, torch.qint32).int_repr()
    q = P.quantize(x, 1.0, zero_point, torch.int32)
    assert q.tolist() == expected.tolist()
    assert q.tolist()[:4] == [2**31 - 1, 2**31 - 1, -(2**31), -(2**31)]


def test_int32_per_channel_quantize_saturates_at_the_int32_bounds():
    x = torch.tensor([INT32_EDGES, INT32_EDGES])
    q = P.quantize(x, torch.tensor([1.0, 0.5]), torch.tensor([0, 0]), torch.int32, axis=0)
    assert q[:, :4].tolist() == [[2**31 - 1, 2**31 - 1, -(2**31), -(2**31)]] * 2


def test_quantize_rounds_half_to_even():
    # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0 with scale 1 and zero point 0
    q = P.quantize(torch.tensor([0.5, 1.5, 2.5, -0.5]), 1.0, 0, torch.int8)
    assert q.tolist() == [0, 2, 2, 0]


@given(
    rank=st.integers(1, 4),
    axis_pick=st.integers(0, 7),
    dtype=st.sampled_from([torch.uint8, torch.int8]),
    seed=SEEDS,
)
@SETTINGS
def test_per_channel_quantize_equals_per_tensor_on_each_slice_for_any_axis(
    rank, axis_pick, dtype, seed
):
    g = _gen(seed)
    shape = torch.randint(1, 5, (rank,), generator=g).tolist()
    axis = axis_pick % (2 * rank) - rank  # covers negative and positive axes
    x = torch.randn(shape, generator=g) * 3
    channels = shape[axis]
    lo, hi = P.dtype_bounds(dtype)
    scale = torch.rand(channels, generator=g) * 0.1 + 0.01
    zp = torch.randint(lo, hi + 1, (channels,), generator=g, dtype=torch.int32)
    q = P.quantize(x, scale, zp, dtype, axis=axis)
    x2 = P.dequantize(q, scale, zp, axis=axis)
    for c in range(channels):
        xs = x.select(axis, c)
        qs = P.quantize(xs, float(scale[c]), int(zp[c]), dtype)
        assert torch.equal(q.select(axis, c), qs)
        assert torch.equal(x2.select(axis, c), P.dequantize(qs, float(scale[c]), int(zp[c])))


@given(
    groups=st.integers(1, 4),
    group_size=st.sampled_from([2, 4, 8]),
    rows=st.integers(1, 3),
    symmetric=st.booleans(),
    seed=SEEDS,
)
@SETTINGS
def test_per_group_round_trip_is_within_half_a_step_of_each_group(
    groups, group_size, rows, symmetric, seed
):
    x = torch.randn(rows, groups * group_size, generator=_gen(seed))
    scale, zp = P.choose_qparams_per_group(x, group_size, torch.int8, symmetric=symmetric)
    assert scale.shape == (rows, groups) and zp.shape == (rows, groups)
    q = P.quantize_per_group(x, scale, zp, group_size, torch.int8)
    x2 = P.dequantize_per_group(q, scale, zp, group_size)
    # every group's range is covered by its own qparams, so no element saturates
    step = scale.repeat_interleave(group_size, dim=1)
    assert bool(((x - x2).abs() <= _roundtrip_bound(x, step)).all())


def test_per_group_qparams_are_per_tensor_qparams_of_each_group():
    x = torch.randn(2, 8)
    scale, zp = P.choose_qparams_per_group(x, 4, torch.int8, symmetric=False)
    for r in range(2):
        for g in range(2):
            chunk = x[r, 4 * g : 4 * g + 4]
            s, z = P.choose_qparams(chunk.min(), chunk.max(), torch.int8, torch.per_tensor_affine)
            assert scale[r, g] == s[0] and zp[r, g] == z[0]


@pytest.mark.parametrize(
    ("dtype", "mantissa_bits"), [(torch.float8_e4m3fn, 3), (torch.float8_e5m2, 2)]
)
@given(scale=st.floats(1e-3, 1e3), seed=SEEDS)
@SETTINGS
def test_float8_round_trip_has_relative_error_of_half_an_ulp(dtype, mantissa_bits, scale, seed):
    fmax = torch.finfo(dtype).max
    tiny = torch.finfo(dtype).smallest_normal
    # magnitudes in the normal range of the float8 format, after scaling
    mag = torch.exp(
        torch.rand(200, generator=_gen(seed)) * (math.log(fmax) - math.log(tiny)) + math.log(tiny)
    )
    sign = torch.where(torch.rand(200, generator=_gen(seed + 1)) < 0.5, -1.0, 1.0)
    x = (mag * sign * scale).to(torch.float32)
    q = P.quantize_float8(x, scale, dtype)
    x2 = P.dequantize_float8(q, scale)
    assert q.dtype == dtype
    # round to nearest with m mantissa bits: relative error <= 2**-(m+1) (plus float32 slack)
    rel = ((x - x2).abs() / x.abs()).max().item()
    assert rel <= 2.0 ** -(mantissa_bits + 1) * (1 + 1e-5)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_saturates_at_the_largest_finite_value_instead_of_inf(dtype):
    fmax = torch.finfo(dtype).max
    q = P.quantize_float8(torch.tensor([1e30, -1e30, float("inf")]), 1.0, dtype)
    assert q.to(torch.float32).tolist() == [fmax, -fmax, fmax]


# --------------------------------------------------------------------------------------------
# qparams
# --------------------------------------------------------------------------------------------


def _torch_observer_qparams(dtype, qscheme, reduce_range, qmin, qmax, lo, hi):
    """torch.ao's own math: its observer's _calculate_qparams on the same min/max."""
    import torch.ao.quantization.observer as tobs

    per_channel = qscheme in P.PER_CHANNEL_SCHEMES
    cls = tobs.PerChannelMinMaxObserver if per_channel else tobs.MinMaxObserver
    with expected_torch_deprecations():
        obs = cls(
            dtype=dtype, qscheme=qscheme, reduce_range=reduce_range, quant_min=qmin, quant_max=qmax
        )
        return obs._calculate_qparams(lo, hi)


@requires_torch_ao
@given(
    dtype=st.sampled_from([torch.quint8, torch.qint8, torch.qint32]),
    qscheme=st.sampled_from(
        [
            torch.per_tensor_affine,
            torch.per_tensor_symmetric,
            torch.per_channel_affine,
            torch.per_channel_symmetric,
            torch.per_channel_affine_float_qparams,
        ]
    ),
    reduce_range=st.booleans(),
    custom=st.booleans(),
    seed=SEEDS,
)
@SETTINGS
def test_choose_qparams_matches_torch_ao_observer_math(dtype, qscheme, reduce_range, custom, seed):
    if qscheme in P.SYMMETRIC_SCHEMES and reduce_range and dtype == torch.quint8:
        return  # rejected by both (the zero point 128 would not fit [0, 127])
    if qscheme == torch.per_channel_affine_float_qparams and dtype == torch.qint32:
        return  # float qparams are an 8/4-bit embedding scheme
    g = _gen(seed)
    per_channel = qscheme in P.PER_CHANNEL_SCHEMES
    n = 5 if per_channel else 1
    a, b = torch.randn(n, generator=g) * 4, torch.randn(n, generator=g) * 4
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    if not per_channel:
        lo, hi = lo[0], hi[0]
    qmin, qmax = (None, None)
    if custom:
        qmin, qmax = (-100, 100) if dtype != torch.quint8 else (0, 200)
    ours = P.choose_qparams(lo, hi, dtype, qscheme, qmin, qmax, reduce_range)
    theirs = _torch_observer_qparams(dtype, qscheme, reduce_range, qmin, qmax, lo, hi)
    assert torch.equal(ours[0], theirs[0])
    assert torch.equal(ours[1], theirs[1])
    assert ours[1].dtype == theirs[1].dtype


def test_choose_qparams_widens_the_range_to_include_zero():
    # [2, 6] is widened to [0, 6]: scale 6/255, zero point 0 (0.0 exactly representable)
    s, z = P.choose_qparams(torch.tensor(2.0), torch.tensor(6.0), torch.uint8)
    assert s.item() == pytest.approx(6 / 255) and z.item() == 0


def test_symmetric_uint8_zero_point_is_128_or_the_middle_of_a_custom_range():
    lo, hi = torch.tensor(-1.0), torch.tensor(1.0)
    _, z = P.choose_qparams(lo, hi, torch.uint8, torch.per_tensor_symmetric)
    _, zc = P.choose_qparams(lo, hi, torch.uint8, torch.per_tensor_symmetric, 0, 101)
    assert z.item() == 128 and zc.item() == 50


def test_unobserved_range_gives_neutral_qparams():
    s, z = P.choose_qparams(torch.tensor(float("inf")), torch.tensor(float("-inf")))
    assert s.tolist() == [1.0] and z.tolist() == [0]


def test_scale_never_drops_below_eps_for_a_constant_input():
    # min == max == 0 would give scale 0; eps (float32 machine epsilon) is the floor
    s, z = P.choose_qparams(torch.tensor(0.0), torch.tensor(0.0), torch.uint8)
    assert s.item() == pytest.approx(torch.finfo(torch.float32).eps) and z.item() == 0


@pytest.mark.parametrize(
    ("dtype", "reduce_range", "expected"),
    [
        (torch.uint8, False, (0, 255)),
        (torch.uint8, True, (0, 127)),
        (torch.int8, True, (-64, 63)),
        # wider dtypes ignore reduce_range, as torch.ao does
        (torch.int16, True, (-(2**15), 2**15 - 1)),
        (torch.int32, True, (-(2**31), 2**31 - 1)),
        (torch.quint4x2, False, (0, 15)),
    ],
)
def test_quant_range_defaults_and_reduce_range(dtype, reduce_range, expected):
    assert P.quant_range(dtype, reduce_range=reduce_range) == expected


def test_reduce_range_halves_a_custom_range():
    assert P.quant_range(torch.int8, -128, 127, reduce_range=True) == (-64, 63)
    assert P.quant_range(torch.uint8, 0, 200, reduce_range=True) == (0, 100)


def test_float_zero_point_takes_part_in_rounding():
    # float qparams: q = round(x / s + z); 0.26/0.1 + 0.3 = 2.9 -> 3, not round(2.6) + 0.3
    q = P.quantize(
        torch.tensor([[0.26]]), torch.tensor([0.1]), torch.tensor([0.3]), torch.uint8, axis=0
    )
    assert q.item() == 3


# --------------------------------------------------------------------------------------------
# fake-quant
# --------------------------------------------------------------------------------------------


def test_fake_quantize_equals_dequantize_of_quantize():
    x = torch.randn(64) * 3
    y = P.fake_quantize(x, 0.05, 10, -128, 127)
    assert torch.equal(y, P.dequantize(P.quantize(x, 0.05, 10, torch.int8), 0.05, 10))


def test_fake_quantize_gradient_passes_inside_the_range_and_stops_outside():
    # range with scale 1, zero point 0, [-2, 2]: x = 3 and -5 are clamped
    x = torch.tensor([-5.0, -1.2, 0.4, 1.9, 3.0], requires_grad=True)
    P.fake_quantize(x, 1.0, 0, -2, 2).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


# --------------------------------------------------------------------------------------------
# differential: the quantized_decomposed ops (torch's registration on this torch)
# --------------------------------------------------------------------------------------------

DEC = torch.ops.quantized_decomposed
# On a torch without its own registration the ops are qbc's: comparing would be circular.
requires_torch_decomposed = pytest.mark.skipif(
    decomposed.source != "torch",
    reason=f"quantized_decomposed is qbc's own registration on torch {torch.__version__}",
)
requires_torch_fake_quant = pytest.mark.skipif(
    not hasattr(torch, "fake_quantize_per_channel_affine"),
    reason=f"torch {torch.__version__} has no fake_quantize_per_*_affine ops",
)


@requires_torch_decomposed
@given(per_tensor_case())
@SETTINGS
def test_quantize_per_tensor_is_bit_identical_to_quantized_decomposed(case):
    dtype, lo, hi, scale, zp, seed = case
    x = torch.randn(300, generator=_gen(seed)) * scale * (hi - lo) / 4
    ours = P.quantize(x, scale, zp, dtype, lo, hi)
    theirs = DEC.quantize_per_tensor(x, scale, zp, lo, hi, dtype)
    assert torch.equal(ours, theirs)
    # the .tensor overload: a float32 scale tensor, as observers produce
    s32, z = torch.tensor([scale]), torch.tensor([zp])
    theirs_t = DEC.quantize_per_tensor.tensor(x, s32, z, lo, hi, dtype)
    assert torch.equal(P.quantize(x, s32, z, dtype, lo, hi), theirs_t)
    assert torch.equal(
        P.dequantize(ours, scale, zp), DEC.dequantize_per_tensor(ours, scale, zp, lo, hi, dtype)
    )


@requires_torch_decomposed
@given(axis=st.integers(-3, 2), dtype=st.sampled_from([torch.uint8, torch.int8]), seed=SEEDS)
@SETTINGS
def test_quantize_per_channel_is_bit_identical_to_quantized_decomposed(axis, dtype, seed):
    g = _gen(seed)
    x = torch.randn(3, 4, 5, generator=g) * 2
    channels = x.shape[axis]
    lo, hi = P.dtype_bounds(dtype)
    scale = torch.rand(channels, generator=g) * 0.05 + 1e-3
    zp = torch.randint(lo, hi + 1, (channels,), generator=g)
    ours = P.quantize(x, scale, zp, dtype, axis=axis)
    # the decomposed op wants a non-negative axis
    theirs = DEC.quantize_per_channel(x, scale, zp, axis % 3, lo, hi, dtype)
    assert torch.equal(ours, theirs)
    assert torch.equal(
        P.dequantize(ours, scale, zp, axis=axis),
        DEC.dequantize_per_channel(ours, scale, zp, axis % 3, lo, hi, dtype),
    )


@requires_torch_decomposed
def test_choose_qparams_matches_the_decomposed_choose_qparams_op():
    x = torch.randn(100) * 3 + 1
    s, z = DEC.choose_qparams.tensor(x, -128, 127, torch.finfo(torch.float32).eps, torch.int8)
    ours = P.choose_qparams(x.min(), x.max(), torch.int8, torch.per_tensor_affine, -128, 127)
    assert torch.equal(ours[0], s.reshape(1)) and int(ours[1]) == int(z)


@requires_torch_fake_quant
def test_fake_quantize_is_bit_identical_to_torch_fake_quantize_ops():
    x = torch.randn(8, 16) * 4
    y = P.fake_quantize(x, 0.037, 3, 0, 255)
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, 0.037, 3, 0, 255))
    scale = torch.rand(16) * 0.1 + 0.01
    zp = torch.randint(-10, 10, (16,), dtype=torch.int32)
    yc = P.fake_quantize(x, scale, zp, -128, 127, axis=1)
    assert torch.equal(yc, torch.fake_quantize_per_channel_affine(x, scale, zp, 1, -128, 127))


# --------------------------------------------------------------------------------------------
# bad input: ValueError naming the argument
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda x: P.quantize(x, 0.0, 0, torch.uint8), "scale"),
        (lambda x: P.quantize(x, -0.1, 0, torch.uint8), "scale"),
        (lambda x: P.quantize(x, float("nan"), 0, torch.uint8), "scale"),
        (lambda x: P.quantize(x, 0.1, 0, torch.uint8, 10, 5), "quant_min"),
        (lambda x: P.quantize(x, 0.1, 300, torch.uint8), "zero_point"),
        (lambda x: P.quantize(x, 0.1, -1, torch.uint8), "zero_point"),
        (lambda x: P.quantize(x, 0.1, 0, torch.float32), "dtype"),
        (lambda x: P.quantize(x, 0.1, 0, "int8"), "dtype"),
        (lambda x: P.quantize(x.to(torch.int32), 0.1, 0, torch.uint8), "x"),
        (lambda x: P.quantize(x, torch.ones(4), torch.zeros(4), torch.uint8, axis=5), "axis"),
        (lambda x: P.quantize(x, torch.ones(3), torch.zeros(3), torch.uint8, axis=1), "scale"),
        (lambda x: P.quantize(x, torch.ones(4), torch.zeros(4), torch.uint8), "scale"),
        (lambda x: P.quantize(x[0, 0], torch.ones(1), torch.zeros(1), torch.uint8, axis=0), "x"),
        (lambda x: P.dequantize(x, 0.1, 0), "q"),
        (lambda x: P.fake_quantize(x, 0.1, 0, 255, 0), "quant_min"),
        (lambda x: P.quantize_float8(x, 0.0), "scale"),
        (lambda x: P.quantize_float8(x, 1.0, torch.int8), "dtype"),
        (
            lambda x: P.choose_qparams(x.min(), x.max(), qscheme=torch.per_tensor_affine, eps=0),
            "eps",
        ),
        (lambda x: P.choose_qparams(x.min(), x.max(), torch.uint8, "affine"), "qscheme"),
        (lambda x: P.choose_qparams(x.max(), x.min()), "min_val"),
        (lambda x: P.choose_qparams_per_group(x, 3), "group_size"),
        (lambda x: P.quantize_per_group(x, torch.ones(8), torch.zeros(8), 3), "group_size"),
        (
            lambda x: P.dequantize_per_group(x.to(torch.int8), torch.ones(8), torch.zeros(8), 0),
            "group_size",
        ),
        (lambda x: P.quantize(x, torch.ones(4), torch.zeros(4), torch.uint8, axis="1"), "axis"),
        (lambda x: P.quant_range(torch.int8, -200, 0), "quant_min"),
        (lambda x: P.quant_range(torch.int8, 0, 200), "quant_max"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, argument):
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        call(x)


def test_primitives_emit_no_warnings():
    # the project rule: a warning from qbc code is a bug (pytest turns it into an error anyway,
    # this documents that the common path touches no deprecated torch API)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s, z = P.choose_qparams(torch.tensor(-1.0), torch.tensor(1.0), torch.qint8)
        P.dequantize(P.quantize(torch.randn(4), s, z, torch.qint8), s, z)
