"""Engine registry and the exact integer kernels (reference spec, int_mm equivalence)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import compat
from harness.quant import engines as E


def _codes(shape, dtype, gen):
    lo, hi = (0, 256) if dtype == torch.uint8 else (-128, 128)
    return torch.randint(lo, hi, shape, dtype=dtype, generator=gen)


# ----------------------------------------------------------------------------- registry


def test_registry_lists_the_six_engines_in_order():
    assert tuple(E.ENGINES) == ("reference", "int_mm", "fbgemm", "x86", "qnnpack", "onednn")


def test_integer_engines_are_always_available():
    assert {"reference", "int_mm"} <= set(E.available_engines())


def test_get_engine_rejects_unknown_name_naming_engine():
    with pytest.raises(ValueError, match="engine: 'cuda_magic'"):
        E.get_engine("cuda_magic")


def test_engine_unavailable_names_engine_and_torch_release(monkeypatch):
    # Simulate a torch release without quantized kernels (as a future torch will be).
    monkeypatch.setattr(E.compat, "has_quantized_engines", lambda: False)
    with pytest.raises(E.EngineUnavailable) as info:
        E.get_engine("fbgemm")
    message = str(info.value)
    assert "'fbgemm'" in message
    assert compat.torch_release() in message
    assert info.value.engine == "fbgemm"
    assert "fbgemm" not in E.available_engines()


def test_engine_rows_report_availability_and_reason(monkeypatch):
    monkeypatch.setattr(E.compat, "has_quantized_engines", lambda: False)
    rows = {r["name"]: r for r in E.engine_rows()}
    assert rows["reference"]["available"] and rows["reference"]["reason"] == ""
    assert not rows["qnnpack"]["available"]
    assert compat.torch_release() in rows["qnnpack"]["reason"]
    assert set(rows["x86"]) == {"name", "kind", "available", "reason", "description", "detail"}


def test_use_engine_nests_and_restores():
    assert E.current_engine() == "reference"
    with E.use_engine("int_mm"):
        assert E.current_engine() == "int_mm"
        with E.use_engine("reference"):
            assert E.current_engine() == "reference"
        assert E.current_engine() == "int_mm"
    assert E.current_engine() == "reference"


def test_use_engine_restores_after_an_exception():
    with pytest.raises(RuntimeError), E.use_engine("int_mm"):
        raise RuntimeError("boom")
    assert E.current_engine() == "reference"


def test_use_engine_rejects_unknown_engine():
    with pytest.raises(ValueError, match="engine"), E.use_engine("nope"):
        pass


def test_module_engine_overrides_context():
    assert E.resolve_engine("int_mm") == "int_mm"
    with E.use_engine("int_mm"):
        assert E.resolve_engine("") == "int_mm"
        assert E.resolve_engine("reference") == "reference"


# ----------------------------------------------------------------------------- kernels


def test_uint8_to_int8_shift_is_exact_for_every_code():
    # int_mm relies on: int8(q) XOR 0x80 == q - 128 for all 256 uint8 codes.
    q = torch.arange(256, dtype=torch.uint8)
    shifted = torch.bitwise_xor(q.to(torch.int8), -128)
    assert torch.equal(shifted.to(torch.int64), q.to(torch.int64) - 128)


def test_reference_accumulator_is_the_integer_dot_product():
    # x codes [[3, 5]] with z_x = 1, w codes [[2, -1], [0, 4]] with z_w = [0, 1]:
    # row 0: (3-1)*2 + (5-1)*(-1) = 0;  row 1: (3-1)*(0-1) + (5-1)*(4-1) = 10
    x = torch.tensor([[3, 5]], dtype=torch.uint8)
    w = torch.tensor([[2, -1], [0, 4]], dtype=torch.int8)
    acc = E.matmul_acc_reference(x, torch.tensor([1]), w, torch.tensor([0, 1]))
    assert acc.tolist() == [[0, 10]]
    assert acc.dtype == torch.int64


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 17, 5), (7, 64, 3), (33, 129, 65)])
@pytest.mark.parametrize("x_dtype", [torch.uint8, torch.int8])
def test_int_mm_accumulator_equals_reference(m, k, n, x_dtype):
    gen = torch.Generator().manual_seed(m * 1000 + k * 10 + n)
    x = _codes((m, k), x_dtype, gen)
    w = _codes((n, k), torch.int8, gen)
    x_zp = torch.tensor([int(x.flatten()[0])])
    w_zp = torch.randint(-5, 6, (n,), generator=gen)  # affine weights exercise every term
    ref = E.matmul_acc_reference(x, x_zp, w, w_zp)
    # int_mm hands over exact integers in float64 (what requantize consumes)
    assert torch.equal(E.matmul_acc_int_mm(x, x_zp, w, w_zp), ref.to(torch.float64))


def test_int_mm_accumulator_exact_at_the_extremes():
    # All-255 activations with z_x = 0 against all -128 weights: the largest magnitudes,
    # |acc| = K * 255 * 128 per element; nothing may wrap.
    k = 4096
    x = torch.full((2, k), 255, dtype=torch.uint8)
    w = torch.full((3, k), -128, dtype=torch.int8)
    acc = E.matmul_acc_int_mm(x, torch.tensor([0]), w, torch.tensor([0]))
    assert acc.unique().tolist() == [-k * 255 * 128]


def test_int_mm_max_k_keeps_the_int32_product_exact():
    assert E.INT_MM_MAX_K * 128 * 128 <= 2**31 - 1 < (E.INT_MM_MAX_K + 1) * 128 * 128


def test_int_mm_refuses_a_k_whose_product_could_overflow():
    k = E.INT_MM_MAX_K + 1
    x = torch.zeros(1, k, dtype=torch.uint8)
    w = torch.zeros(1, k, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"^x_q: K="):
        E.matmul_acc_int_mm(x, torch.tensor([0]), w, torch.tensor([0]))


@pytest.mark.parametrize(
    "stride,padding,dilation,groups", [([1, 1], [0, 0], [1, 1], 1), ([2, 1], [1, 2], [1, 2], 2)]
)
@pytest.mark.parametrize("engine", ["reference", "int_mm"])
def test_conv_accumulator_equals_float64_convolution(engine, stride, padding, dilation, groups):
    # Integer-valued float64 convolutions are exact (all partial sums << 2**53): an oracle.
    gen = torch.Generator().manual_seed(3)
    x = _codes((2, 4, 7, 6), torch.uint8, gen)
    w = _codes((6, 4 // groups, 3, 2), torch.int8, gen)
    z_x, z_w = 9, torch.tensor([1, -2, 0, 3, 0, 5])
    acc = E.conv_acc(engine, x, torch.tensor([z_x]), w, z_w, stride, padding, dilation, groups)
    oracle = F.conv2d(
        x.double() - z_x,
        w.double() - z_w.double().reshape(-1, 1, 1, 1),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )
    assert torch.equal(acc, oracle)


def test_conv_padding_reads_the_input_zero_point():
    # A 1x1 input padded by 1 with a 3x3 all-ones kernel: only the centre tap sees data, so
    # acc = q - z_x for every padded neighbourhood; padding must contribute exactly 0.
    x = torch.tensor([[[[200]]]], dtype=torch.uint8)
    w = torch.ones(1, 1, 3, 3, dtype=torch.int8)
    acc = E.conv_acc(
        "int_mm", x, torch.tensor([77]), w, torch.tensor([0]), [1, 1], [1, 1], [1, 1], 1
    )
    assert acc.flatten().tolist() == [200 - 77]


def test_requantize_formula_on_a_hand_computed_example():
    # Powers of two keep every step exact. acc = 10; s_x * s_w = 0.125 * 0.25 = 0.03125 and
    # bias 0.46875 -> b_q = 15; (10 + 15) * 0.03125 / 0.0625 = 12.5 -> round half to even
    # 12, + z_y 3 = 15.
    q = E.requantize(
        torch.tensor([[10]]),
        torch.tensor([0.46875]),
        torch.tensor([0.125]),
        torch.tensor([0.25]),
        torch.tensor([0.0625]),
        torch.tensor([3]),
        0,
        255,
        torch.uint8,
        1,
    )
    assert q.tolist() == [[15]]


def test_requantize_saturates_at_the_output_range():
    acc = torch.tensor([[-10_000, 10_000]])
    one = torch.tensor([1.0])
    q = E.requantize(acc, None, one, one, one, torch.tensor([0]), -128, 127, torch.int8, 1)
    assert q.tolist() == [[-128, 127]]


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 9),
    k=st.integers(1, 40),
    n=st.integers(1, 9),
    signed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_int_mm_equals_reference_for_any_shape_and_zero_points(m, k, n, signed, seed):
    gen = torch.Generator().manual_seed(seed)
    x_dtype = torch.int8 if signed else torch.uint8
    x = _codes((m, k), x_dtype, gen)
    w = _codes((n, k), torch.int8, gen)
    lo, hi = (-128, 128) if signed else (0, 256)
    x_zp = torch.randint(lo, hi, (1,), generator=gen)
    w_zp = torch.randint(-128, 128, (n,), generator=gen)
    ref = E.matmul_acc_reference(x, x_zp, w, w_zp).to(torch.float64)
    assert torch.equal(E.matmul_acc_int_mm(x, x_zp, w, w_zp), ref)
