"""Weight-only quantized Embedding / EmbeddingBag, 8-bit and 4-bit."""

from collections import OrderedDict

import pytest
import torch
from quant_support import NATIVE

from harness import compat
from harness.quant import engines as E
from harness.quant import nn as qnn
from harness.quant.nn.testing import export_roundtrip, script_roundtrip, trace_roundtrip
from harness.quant.qconfig import get_embedding_qconfig

IDX = torch.tensor([[1, 2, 9], [0, 0, 3]])
BAG_IDX = torch.tensor([1, 2, 9, 0, 0, 3, 4])
BAG_OFFSETS = torch.tensor([0, 3, 3])  # bags [1, 2, 9], [] (empty), [0, 0, 3, 4]


def make_embedding(bits=8, seed=0):
    torch.manual_seed(seed)
    f = torch.nn.Embedding(10, 8)
    f.qconfig = get_embedding_qconfig(bits)
    return f, qnn.Embedding.from_float(f)


def make_bag(bits=8, mode="sum", seed=0, **kw):
    torch.manual_seed(seed)
    f = torch.nn.EmbeddingBag(10, 8, mode=mode, **kw)
    f.qconfig = get_embedding_qconfig(bits)
    return f, qnn.EmbeddingBag.from_float(f)


def run(m, engine, *args):
    with E.use_engine(engine):
        return m(*args)


@pytest.mark.parametrize("bits", [8, 4])
def test_rows_dequantize_with_float_qparams(bits):
    f, m = make_embedding(bits)
    assert int(m.weight.max()) <= (15 if bits == 4 else 255)
    expected = (m.weight[IDX].float() - m.weight_zero_point[IDX, None]) * m.weight_scale[IDX, None]
    assert torch.equal(run(m, "reference", IDX), expected)
    # one step of a row is its scale: the table reproduces the float rows to half a step
    err = (run(m, "reference", IDX) - f(IDX)).abs()
    assert bool((err <= m.weight_scale[IDX, None] * 0.5 + 1e-6).all())


@pytest.mark.parametrize("bits", [8, 4])
def test_int_mm_is_bit_identical_to_reference(bits):
    _, m = make_embedding(bits)
    assert torch.equal(run(m, "int_mm", IDX), run(m, "reference", IDX))
    _, bag = make_bag(bits, "mean")
    assert torch.equal(
        run(bag, "int_mm", BAG_IDX, BAG_OFFSETS), run(bag, "reference", BAG_IDX, BAG_OFFSETS)
    )


@pytest.mark.parametrize("engine", NATIVE)
@pytest.mark.parametrize("bits", [8, 4])
def test_native_embedding_within_one_step_of_reference(engine, bits):
    _, m = make_embedding(bits)
    diff = (run(m, engine, IDX) - run(m, "reference", IDX)).abs()
    # 4-bit tables store scale and bias as float16 in torch's packed rows
    assert bool((diff <= m.weight_scale[IDX, None]).all())


@pytest.mark.parametrize("engine", NATIVE)
@pytest.mark.parametrize("bits", [8, 4])
def test_native_bag_sum_within_one_step_per_row_of_reference(engine, bits):
    _, m = make_bag(bits, "sum")
    psw = torch.rand(7, generator=torch.Generator().manual_seed(0))
    diff = (
        run(m, engine, BAG_IDX, BAG_OFFSETS, psw) - run(m, "reference", BAG_IDX, BAG_OFFSETS, psw)
    ).abs()
    # a bag sums up to 4 rows with weights < 1: at most one step of its largest-scale row each
    assert float(diff.max()) <= 4 * float(m.weight_scale.max())


@pytest.mark.parametrize("engine", NATIVE)
def test_native_bag_equals_torch_ao_embedding_bag(engine):
    _, m = make_bag(8, "sum", include_last_offset=True)
    offsets = torch.tensor([0, 3, 3, 7])
    with E.native_backend(engine), compat.expected_torch_deprecations():
        import torch.ao.nn.quantized as nnq

        ao = nnq.EmbeddingBag(10, 8, mode="sum", include_last_offset=True)
        qweight = torch._make_per_channel_quantized_tensor(
            m.weight, m.weight_scale.double(), m.weight_zero_point, 0
        )
        ao.set_weight(qweight)
        expected = ao(BAG_IDX, offsets)
    # torch.ao packs bias = -z * s from the same float qparams, so results agree to float
    # rounding of that product.
    assert torch.allclose(run(m, engine, BAG_IDX, offsets), expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_native_engines_refuse_modes_their_kernel_lacks(mode):
    # torch 2.13's row-wise kernel returns the sum for mode=mean: refusing beats differing.
    _, m = make_bag(8, mode)
    with pytest.raises(ValueError, match=r"^mode:"):
        run(m, "fbgemm", BAG_IDX, BAG_OFFSETS)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("include_last_offset", [False, True])
def test_bag_modes_match_torch_embedding_bag_on_the_dequantized_table(mode, include_last_offset):
    _, m = make_bag(8, mode, include_last_offset=include_last_offset, padding_idx=0)
    table = m.dequantized_rows(torch.arange(10))
    ref = torch.nn.EmbeddingBag.from_pretrained(
        table, mode=mode, include_last_offset=include_last_offset, padding_idx=0
    )
    offsets = torch.tensor([0, 3, 3, 7]) if include_last_offset else BAG_OFFSETS
    assert torch.allclose(run(m, "reference", BAG_IDX, offsets), ref(BAG_IDX, offsets), atol=1e-6)


def test_two_dimensional_indices_are_fixed_size_bags():
    _, m = make_bag(8, "sum")
    as_1d = run(m, "reference", IDX.reshape(-1), torch.tensor([0, 3]))
    assert torch.equal(run(m, "reference", IDX), as_1d)


@pytest.mark.parametrize("engine", ["reference", "int_mm"])
def test_embedding_script_trace_export_round_trip(engine):
    _, m = make_embedding(4)
    eager = run(m, engine, IDX)
    for loaded in (
        script_roundtrip(m, engine),
        trace_roundtrip(m, (IDX,), engine),
        export_roundtrip(m, (IDX,), engine),
    ):
        assert torch.equal(loaded(IDX), eager)


@pytest.mark.parametrize("mode", ["sum", "max"])
def test_bag_script_trace_export_round_trip(mode):
    _, m = make_bag(8, mode)
    args = (BAG_IDX, BAG_OFFSETS)
    eager = run(m, "int_mm", *args)
    for loaded in (
        script_roundtrip(m, "int_mm"),
        trace_roundtrip(m, args, "int_mm"),
        export_roundtrip(m, args, "int_mm"),
    ):
        assert torch.equal(loaded(*args), eager)


def test_state_dict_keys_and_version_1_migration():
    _, m = make_embedding(8)
    sd = m.state_dict()
    assert {k: v.dtype for k, v in sd.items()} == {
        "weight": torch.uint8,
        "weight_scale": torch.float32,
        "weight_zero_point": torch.float32,
    }
    old = OrderedDict(
        weight=m.weight.clone(),
        weight_qparams=torch.stack([m.weight_scale.double(), m.weight_zero_point.double()]),
    )
    old._metadata = OrderedDict({"": {"version": 1}})
    fresh = qnn.Embedding(10, 8)
    fresh.load_state_dict(old)
    assert fresh.weight_zero_point.dtype == torch.float32
    assert torch.equal(fresh(IDX), m(IDX))


def test_four_bit_table_rejects_codes_above_fifteen():
    _, m = make_embedding(4)
    sd = m.state_dict()
    sd["weight"] = torch.full_like(sd["weight"], 16)
    with pytest.raises(RuntimeError, match="weight"):
        qnn.Embedding(10, 8, bits=4).load_state_dict(sd)


@pytest.mark.parametrize(
    "indices,name",
    [
        (torch.tensor([0.0, 1.0]), "indices"),  # float indices
        (torch.tensor([0, 10]), "indices"),  # out of the table
        (torch.tensor([-1]), "indices"),
    ],
)
def test_bad_indices_raise_value_error(indices, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        make_embedding()[1](indices)


def test_bag_argument_errors_name_the_argument():
    _, m = make_bag(8, "mean")
    with pytest.raises(ValueError, match=r"^offsets:"):
        m(BAG_IDX)
    with pytest.raises(ValueError, match=r"^offsets:"):
        m(BAG_IDX, torch.tensor([1, 3]))  # must start at 0
    with pytest.raises(ValueError, match=r"^per_sample_weights:"):
        m(BAG_IDX, BAG_OFFSETS, torch.ones(7))  # only for mode="sum"


def test_constructor_rejects_bad_bits_and_mode():
    with pytest.raises(ValueError, match=r"^bits:"):
        qnn.Embedding(4, 2, bits=2)
    with pytest.raises(ValueError, match=r"^mode:"):
        qnn.EmbeddingBag(4, 2, mode="median")
