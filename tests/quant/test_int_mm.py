"""The int_mm engine's exact product on this machine: K == 1 layout, plans, the probe."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.quant import engines as E
from harness.quant import int_mm
from harness.quant import nn as qnn
from harness.quant.nn.testing import export_roundtrip, trace_roundtrip


def _exact(a, w):
    return torch.mm(a.to(torch.int64), w.to(torch.int64).t())


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 20),
    k=st.integers(1, 70),
    n=st.integers(1, 20),
    kind=st.sampled_from(["chosen", "split", "int64"]),
    seed=st.integers(0, 2**16),
)
def test_the_chosen_plan_and_the_fallbacks_are_exact_for_any_shape(m, k, n, kind, seed):
    # "chosen" is whatever the probe picked on this machine; "split" is what a capped oneDNN
    # gets; both must equal the int64 product bit for bit, full-range codes included.
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    kind = int_mm.plan().kind if kind == "chosen" else kind
    assert torch.equal(int_mm.product(kind, a, w).to(torch.int64), _exact(a, w))


def test_split_halves_rebuild_every_code_inside_the_unsaturated_range():
    # All 256 int8 codes: hi in [-64, 63] keeps a u8 x s8 pair sum <= 2 * 255 * 64 = 32640,
    # below int16's 32767; lo is one bit; 2 * hi + lo is the code again.
    w = torch.arange(-128, 128, dtype=torch.int8).reshape(256, 1)
    hi, lo = int_mm.split_weight(w).split(256)
    assert int(hi.min()) == -64 and int(hi.max()) == 63
    assert set(lo.flatten().tolist()) == {0, 1}
    assert torch.equal(2 * hi.to(torch.int64) + lo, w.to(torch.int64))


def test_a_single_input_feature_is_passed_row_major():
    # W.t() of a [5, 1] weight has strides (1, 1), which torch._int_mm misreads; the reshape
    # holds the same five values with the strides of a contiguous [1, 5] matrix.
    w = torch.arange(5, dtype=torch.int8).reshape(5, 1)
    b = int_mm.layout(w)
    assert torch.equal(b, w.t()) and b.stride() == (5, 1)
    assert int_mm.layout(torch.zeros(5, 3, dtype=torch.int8)).stride() == (1, 3)


def _one_feature_linear():
    m = qnn.Linear(1, 6)
    gen = torch.Generator().manual_seed(3)
    m.set_weight_bias(
        torch.randint(-128, 128, (6, 1), dtype=torch.int8, generator=gen),
        torch.full((6,), 0.02),
        torch.zeros(6, dtype=torch.int64),
        torch.randn(6, generator=gen),
    )
    m.set_output_qparams(0.01, 128)
    x = torch.randint(0, 256, (9, 1), dtype=torch.uint8, generator=gen)
    return m, (x, torch.tensor([0.05]), torch.tensor([7]))


def test_linear_with_one_input_feature_equals_reference_eager_traced_and_exported():
    m, args = _one_feature_linear()
    with E.use_engine("reference"):
        expected = m(*args)[0]
    with E.use_engine("int_mm"):
        assert torch.equal(m(*args)[0], expected)
    assert torch.equal(trace_roundtrip(m, args, "int_mm")(*args)[0], expected)
    assert torch.equal(export_roundtrip(m, args, "int_mm")(*args)[0], expected)


def test_qbc_engines_names_the_int_mm_plan():
    rows = {r["name"]: r for r in E.engine_rows()}
    assert rows["int_mm"]["detail"].startswith(int_mm.plan().kind + ": ")
    assert rows["reference"]["detail"] == ""


_CAPPED_CHECK = textwrap.dedent(
    """
    import torch
    from harness.quant import engines as E, int_mm
    gen = torch.Generator().manual_seed(0)
    for m, k, n in ((1, 64, 48), (33, 300, 70), (200, 512, 96)):
        x = torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=gen)
        x[::2] = 255  # shifted to 127: the operand that saturates a capped oneDNN
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
        w[::2] = -128
        zx, zw = torch.tensor([3]), torch.zeros(n, dtype=torch.int64)
        ref = E.matmul_acc_reference(x, zx, w, zw).to(torch.float64)
        assert torch.equal(E.matmul_acc_int_mm(x, zx, w, zw), ref), (m, k, n)
    # graphs carry the split product, whatever this machine's plan: scripted and traced too
    for k in (1, 300):
        w = torch.full((6, k), -128, dtype=torch.int8)
        x = torch.full((5, k), 255, dtype=torch.uint8)
        args = (x, torch.tensor([3]), w, torch.zeros(6, dtype=torch.int64))
        ref = E.matmul_acc_reference(*args).to(torch.float64)
        assert torch.equal(torch.jit.script(E.matmul_acc_int_mm)(*args), ref), k
        assert torch.equal(torch.jit.trace(E.matmul_acc_int_mm, args)(*args), ref), k
    print(int_mm.plan().kind)
    """
)


def test_int_mm_stays_exact_when_onednn_and_aten_are_capped_to_avx2():
    # Caps are read when torch starts, so this runs in a child. On a VNNI CPU the capped oneDNN
    # saturates (the probe then picks "split"); on an AVX2-only CPU the cap changes nothing.
    # Eager calls, and scripted and traced kernels (the graph form), must stay exact.
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    done = subprocess.run(
        [sys.executable, "-c", _CAPPED_CHECK], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in int_mm.PLANS


def test_an_unknown_plan_is_refused_naming_it():
    with pytest.raises(ValueError, match="kind: 'vnni'"):
        int_mm.product("vnni", torch.zeros(1, 1, dtype=torch.int8), torch.zeros(1, 1))


# ----------------------------------------------------------------------------- eager layers
# The eager int_mm path (prepared weights, int32 accumulator) must give reference's codes bit
# for bit for any shape and qparams: asymmetric weights (the row-sum term), int8 activations
# (no shift), biases so large that int32 would overflow (the int64 fallback), ReLU.


def _weights(gen, shape, per_channel, asymmetric):
    n = shape[0]
    w = torch.randint(-128, 128, shape, dtype=torch.int8, generator=gen)
    count = n if per_channel else 1
    scale = 0.001 + 0.02 * torch.rand(count, generator=gen)
    zp = (
        torch.randint(-20, 21, (count,), generator=gen)
        if asymmetric
        else torch.zeros(count, dtype=torch.int64)
    )
    return w, scale, zp


def _codes(gen, shape, dtype):
    lo, hi = (0, 256) if dtype == torch.uint8 else (-128, 128)
    x = torch.randint(lo, hi, shape, dtype=dtype, generator=gen)
    zp = torch.randint(lo, hi, (1,), generator=gen)
    return x, torch.tensor([0.01 + 0.1 * float(torch.rand(1, generator=gen))]), zp


def _both_engines(m, args):
    with E.use_engine("reference"):
        expected = m(*args)
    with E.use_engine("int_mm"):
        got = m(*args)
    return got, expected


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 12),
    k=st.integers(1, 48),
    n=st.integers(1, 12),
    per_channel=st.booleans(),
    asymmetric=st.booleans(),
    signed=st.booleans(),
    relu=st.booleans(),
    bias_exponent=st.sampled_from([None, 0, 12]),  # 1e12 pushes b_q past int32
    seed=st.integers(0, 2**16),
)
def test_eager_linear_equals_reference(
    m, k, n, per_channel, asymmetric, signed, relu, bias_exponent, seed
):
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.int8 if signed else torch.uint8
    layer = (qnn.LinearReLU if relu else qnn.Linear)(
        k, n, bias=bias_exponent is not None, dtype=dtype
    )
    w, scale, zp = _weights(gen, (n, k), per_channel, asymmetric)
    bias = None if bias_exponent is None else torch.randn(n, generator=gen) * 10.0**bias_exponent
    layer.set_weight_bias(w, scale, zp, bias)
    layer.set_output_qparams(0.05 + float(torch.rand(1, generator=gen)), 3 if signed else 120)
    got, expected = _both_engines(layer, _codes(gen, (m, k), dtype))
    assert torch.equal(got[0], expected[0])


CONVS = {1: qnn.Conv1d, 2: qnn.Conv2d, 3: qnn.Conv3d}


@settings(max_examples=30, deadline=None)
@given(
    nd=st.sampled_from([1, 2, 3]),
    batch=st.integers(1, 2),
    groups=st.sampled_from([1, 2, 3]),
    per_group=st.integers(1, 3),
    out_per_group=st.integers(1, 3),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    per_channel=st.booleans(),
    asymmetric=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_eager_conv_equals_reference(
    nd, batch, groups, per_group, out_per_group, kernel, stride, padding, dilation,
    per_channel, asymmetric, seed,
):  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    cin, cout = groups * per_group, groups * out_per_group
    size = dilation * (kernel - 1) + 1 + int(torch.randint(0, 4, (1,), generator=gen))
    layer = CONVS[nd](cin, cout, kernel, stride, padding, dilation, groups)
    w, scale, zp = _weights(gen, tuple(layer.weight.shape), per_channel, asymmetric)
    layer.set_weight_bias(w, scale, zp, torch.randn(cout, generator=gen))
    layer.set_output_qparams(0.1, 100)
    x = _codes(gen, (batch, cin, *[size] * nd), torch.uint8)
    got, expected = _both_engines(layer, x)
    assert torch.equal(got[0], expected[0])


@settings(max_examples=20, deadline=None)
@given(
    m=st.integers(1, 9),
    k=st.integers(1, 40),
    n=st.integers(1, 9),
    per_channel=st.booleans(),
    asymmetric=st.booleans(),
    reduce_range=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_eager_dynamic_linear_equals_reference(
    m, k, n, per_channel, asymmetric, reduce_range, seed
):
    gen = torch.Generator().manual_seed(seed)
    layer = qnn.DynamicLinear(k, n, reduce_range=reduce_range)
    w, scale, zp = _weights(gen, (n, k), per_channel, asymmetric)
    state = {"weight": w, "weight_scale": scale, "weight_zero_point": zp}
    layer.load_state_dict({**state, "bias": torch.randn(n, generator=gen)})
    x = torch.randn(m, k, generator=gen) * 3
    with E.use_engine("reference"):
        expected = layer(x)
    with E.use_engine("int_mm"):
        assert torch.equal(layer(x), expected)


def test_the_accumulator_widens_to_int64_only_when_int32_could_overflow():
    # K = 4 codes at most 255 - 0 and weights at most 128 from their zero point: |acc| <= 4 *
    # 255 * 128 = 130560 fits int32; a bias of 2**31 integer steps does not.
    weight = int_mm.prepare(torch.full((2, 4), -128, dtype=torch.int8), torch.zeros(2))
    a, c, d = int_mm.shift(torch.full((3, 4), 255, dtype=torch.uint8), 0)
    small = int_mm.accumulate(weight, a, int_mm.correction(weight, c, d))
    assert small.dtype == torch.int32 and small.flatten().tolist() == [4 * 255 * -128] * 6
    big = int_mm.accumulate(weight, a, int_mm.correction(weight, c, d, torch.tensor([2**31, 0])))
    assert big.dtype == torch.int64
    assert big[:, 0].tolist() == [2**31 + 4 * 255 * -128] * 3


def test_prepared_weights_follow_in_place_edits_and_replacements():
    m, args = _one_feature_linear()
    with E.use_engine("int_mm"):
        m(*args)  # prepares the weight-side terms
        with torch.no_grad():
            m.weight.add_(1)
        after_edit = m(*args)[0]
        m.set_weight_bias(m.weight.flip(0), m.weight_scale, m.weight_zero_point, m.bias)
        after_swap = m(*args)[0]
    with E.use_engine("reference"):
        m.set_weight_bias(m.weight.flip(0), m.weight_scale, m.weight_zero_point, m.bias)
        assert torch.equal(after_edit, m(*args)[0])
        m.set_weight_bias(m.weight.flip(0), m.weight_scale, m.weight_zero_point, m.bias)
        assert torch.equal(after_swap, m(*args)[0])
