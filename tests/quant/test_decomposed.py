"""qbc's own quantized_decomposed kernels (the fallback for a torch without them) must agree with
torch's registration op for op, dtypes and values, since exported goldens may be loaded under
either."""

import pytest
import torch

import harness.quant
from harness.quant import decomposed

OURS = "qbc_fallback_under_test"
_KEEP: list = []


@pytest.fixture(scope="module")
def ours():
    # The library object stays alive for the session: dropping it deregisters the ops, which on
    # torch 2.6 leaves a broken op entry that later run_decompositions() calls trip over.
    _KEEP.append(decomposed._define_ours(OURS))
    return getattr(torch.ops, OURS)


def test_import_harness_quant_registers_quantized_decomposed():
    assert harness.quant  # imported for its side effect
    assert decomposed.ensure_registered() in ("torch", "qbc")
    assert hasattr(torch.ops.quantized_decomposed, "quantize_per_tensor")


# An awkward scale (not representable in float32) exposes float32-vs-float64 reciprocal drift.
@pytest.mark.parametrize(
    ("dtype", "zero_point", "bounds"),
    [
        (torch.uint8, 3, (0, 255)),
        (torch.int8, -2, (-128, 127)),
        (torch.int16, 7, (-(2**15), 2**15 - 1)),
        (torch.float8_e4m3fn, 0, (-448, 448)),
    ],
)
def test_fallback_per_tensor_matches_torch(ours, dtype, zero_point, bounds):
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 5
    scale = 0.0123456789
    theirs = torch.ops.quantized_decomposed
    q_ref = theirs.quantize_per_tensor(x, scale, zero_point, *bounds, dtype)
    q = ours.quantize_per_tensor(x, scale, zero_point, *bounds, dtype)
    assert torch.equal(q.float(), q_ref.float())
    dq_ref = theirs.dequantize_per_tensor(q_ref, scale, zero_point, *bounds, dtype)
    dq = ours.dequantize_per_tensor(q, scale, zero_point, *bounds, dtype)
    assert torch.equal(dq, dq_ref)


def test_fallback_per_channel_matches_torch(ours):
    x = torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(1))
    scales = torch.rand(5, generator=torch.Generator().manual_seed(2)) / 50 + 1e-3
    zps = torch.tensor([0, 1, -1, 5, -7])
    theirs = torch.ops.quantized_decomposed
    q_ref = theirs.quantize_per_channel(x, scales, zps, 1, -128, 127, torch.int8)
    q = ours.quantize_per_channel(x, scales, zps, 1, -128, 127, torch.int8)
    assert torch.equal(q, q_ref)
    dq_ref = theirs.dequantize_per_channel(q_ref, scales, zps, 1, -128, 127, torch.int8)
    assert torch.equal(
        ours.dequantize_per_channel(q, scales, zps, 1, -128, 127, torch.int8), dq_ref
    )


FLOAT_INPUTS = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("input_dtype", FLOAT_INPUTS)
@pytest.mark.parametrize(
    ("op", "dtype", "bounds"),
    [
        ("choose_qparams", torch.uint8, (0, 255)),
        ("choose_qparams", torch.int8, (-128, 127)),
        ("choose_qparams", torch.int8, (-127, 127)),
        ("choose_qparams_symmetric", torch.int8, (-128, 127)),
        ("choose_qparams_symmetric", torch.uint8, (0, 255)),
        # a narrower uint8 range: torch's op still puts the symmetric zero point at 128
        ("choose_qparams_symmetric", torch.uint8, (0, 254)),
    ],
)
def test_fallback_choose_qparams_matches_torch_in_dtype_and_value(
    ours, op, dtype, bounds, input_dtype
):
    x = (torch.randn(257, generator=torch.Generator().manual_seed(3)) * 3 + 0.5).to(input_dtype)
    theirs = getattr(torch.ops.quantized_decomposed, op).tensor(x, *bounds, 2**-12, dtype)
    mine = getattr(ours, op).tensor(x, *bounds, 2**-12, dtype)
    for a, b in zip(mine, theirs, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)


@pytest.mark.parametrize("out_dtype", [None, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("overload", ["default", "tensor"])
def test_fallback_dequantize_per_tensor_computes_in_out_dtype_like_torch(ours, out_dtype, overload):
    # torch computes (q.to(out_dtype) - z) * s in out_dtype: one rounding there, not a float32
    # result rounded again
    q = torch.randint(
        -128, 128, (4096,), dtype=torch.int8, generator=torch.Generator().manual_seed(4)
    )
    s, z = 0.0123456789, -3
    if overload == "tensor":
        s, z = torch.tensor([s], dtype=torch.float64), torch.tensor([z])
    args = (q, s, z, -128, 127, torch.int8)
    theirs = getattr(torch.ops.quantized_decomposed.dequantize_per_tensor, overload)(
        *args, out_dtype=out_dtype
    )
    mine = getattr(ours.dequantize_per_tensor, overload)(*args, out_dtype=out_dtype)
    assert mine.dtype == theirs.dtype and torch.equal(mine, theirs)


@pytest.mark.parametrize("input_dtype", FLOAT_INPUTS)
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("out_dtype", [None, torch.float16])
def test_fallback_per_channel_pair_matches_torch_for_any_scale_and_input_dtype(
    ours, input_dtype, scale_dtype, out_dtype
):
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(6, 5, 3, generator=gen) * 2).to(input_dtype)
    # 1/s is not exact for these scales in either precision
    scales = (torch.rand(5, generator=gen, dtype=torch.float64) / 50 + 1e-3).to(scale_dtype)
    zps = torch.tensor([0, 1, -1, 5, -7])
    theirs = torch.ops.quantized_decomposed
    q_ref = theirs.quantize_per_channel(x, scales, zps, 1, -128, 127, torch.int8)
    q = ours.quantize_per_channel(x, scales, zps, 1, -128, 127, torch.int8)
    assert q.dtype == q_ref.dtype and torch.equal(q, q_ref)
    for zp in (zps, None):
        dq_ref = theirs.dequantize_per_channel(
            q_ref, scales, zp, 1, -128, 127, torch.int8, out_dtype=out_dtype
        )
        dq = ours.dequantize_per_channel(
            q, scales, zp, 1, -128, 127, torch.int8, out_dtype=out_dtype
        )
        assert dq.dtype == dq_ref.dtype and torch.equal(dq, dq_ref)


@pytest.mark.parametrize("input_dtype", [torch.float16, torch.bfloat16])
def test_fallback_quantize_per_tensor_takes_half_inputs_like_torch(ours, input_dtype):
    x = (torch.randn(1024, generator=torch.Generator().manual_seed(6)) * 4).to(input_dtype)
    theirs = torch.ops.quantized_decomposed.quantize_per_tensor(x, 0.05, 2, -128, 127, torch.int8)
    mine = ours.quantize_per_tensor(x, 0.05, 2, -128, 127, torch.int8)
    assert mine.dtype == theirs.dtype and torch.equal(mine, theirs)
