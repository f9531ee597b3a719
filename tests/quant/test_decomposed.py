"""qbc's own quantized_decomposed kernels (the fallback for a torch without them) must agree with
torch's registration bit for bit, since exported goldens may be loaded under either."""

import pytest
import torch

import harness
from harness.quant import decomposed

OURS = "qbc_fallback_under_test"
_KEEP: list = []


@pytest.fixture(scope="module")
def ours():
    # The library object stays alive for the session: dropping it deregisters the ops, which on
    # torch 2.6 leaves a broken op entry that later run_decompositions() calls trip over.
    _KEEP.append(decomposed._define_ours(OURS))
    return getattr(torch.ops, OURS)


def test_import_harness_registers_quantized_decomposed():
    assert harness  # imported for its side effect
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
