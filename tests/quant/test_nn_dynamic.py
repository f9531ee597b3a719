"""Dynamic quantized Linear (int8 / float16 weights) and LSTM."""

from collections import OrderedDict

import pytest
import torch

from harness import compat
from harness.quant import engines as E
from harness.quant import nn as qnn
from harness.quant.nn.dynamic import dynamic_qparams
from harness.quant.nn.testing import export_roundtrip, script_roundtrip, trace_roundtrip
from harness.quant.primitives import choose_qparams
from harness.quant.qconfig import (
    default_dynamic_qconfig,
    float16_dynamic_qconfig,
    per_channel_dynamic_qconfig,
)


def native_params(names):
    return [
        pytest.param(
            e,
            marks=pytest.mark.skipif(
                E.ENGINES[e].unavailable_reason() is not None,
                reason=str(E.ENGINES[e].unavailable_reason()),
            ),
        )
        for e in names
    ]


def make_dynamic(k=16, n=8, qconfig=per_channel_dynamic_qconfig, reduce_range=False, seed=0):
    torch.manual_seed(seed)
    f = torch.nn.Linear(k, n)
    f.qconfig = qconfig
    return f, qnn.DynamicLinear.from_float(f, reduce_range=reduce_range)


def make_lstm(seed=0, **kw):
    torch.manual_seed(seed)
    f = torch.nn.LSTM(6, 5, **kw)
    f.qconfig = default_dynamic_qconfig
    return f, qnn.LSTM.from_float(f)


def run(m, engine, *args):
    with E.use_engine(engine):
        return m(*args)


def test_activation_qparams_match_choose_qparams():
    # The in-graph qparams formula is the primitives' affine formula over [0, 255] / [0, 127].
    x = torch.tensor([[-1.5, 0.25, 3.0]])
    for reduce_range, qmax in ((False, 255), (True, 127)):
        scale, zp, _, _ = dynamic_qparams(x, reduce_range)
        ref_s, ref_z = choose_qparams(x.min(), x.max(), torch.uint8, quant_min=0, quant_max=qmax)
        assert torch.equal(scale, ref_s) and int(zp) == int(ref_z)


@pytest.mark.parametrize("shape", [(1, 16), (7, 16), (2, 3, 16)])
@pytest.mark.parametrize("reduce_range", [False, True])
def test_int_mm_is_bit_identical_to_reference(shape, reduce_range):
    _, m = make_dynamic(reduce_range=reduce_range)
    x = torch.randn(shape)
    ref = run(m, "reference", x)
    assert ref.shape == (*shape[:-1], 8) and ref.dtype == torch.float32
    assert torch.equal(run(m, "int_mm", x), ref)


def test_dynamic_linear_approximates_the_float_layer():
    f, m = make_dynamic()
    x = torch.randn(5, 16)
    assert (run(m, "reference", x) - f(x)).abs().max() < 0.05


@pytest.mark.parametrize("engine", native_params(["fbgemm", "x86", "onednn"]))
def test_native_int8_engine_close_to_reference(engine):
    # Same activation qparams (reduce_range, as torch.ao passes for fbgemm/x86), same integer
    # accumulator: only float rounding of the epilogue differs.
    _, m = make_dynamic(reduce_range=True)
    x = torch.randn(6, 16)
    ref = run(m, "reference", x)
    assert (run(m, engine, x) - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("engine", native_params(["qnnpack"]))
def test_qnnpack_dynamic_is_within_one_input_step(engine):
    # qnnpack ignores reduce_range (torch says so), so compare with reduce_range off; the
    # output may move by one activation step per input: |dy| <= s_x * sum_k |w_k|.
    _, m = make_dynamic(qconfig=default_dynamic_qconfig)
    x = torch.randn(6, 16)
    s_x = dynamic_qparams(x, False)[0]
    bound = s_x * (m.weight.float().abs() * m.weight_scale[:, None]).sum(1).max()
    assert (run(m, engine, x) - run(m, "reference", x)).abs().max() <= bound


@pytest.mark.parametrize("engine", native_params(["fbgemm"]))
def test_native_engine_equals_torch_ao_dynamic_linear(engine):
    _, m = make_dynamic(qconfig=default_dynamic_qconfig, reduce_range=True)
    x = torch.randn(4, 16)
    with E.native_backend(engine), compat.expected_torch_deprecations():
        import torch.ao.nn.quantized.dynamic as nnqd

        ao = nnqd.Linear(16, 8)
        ao.set_weight_bias(
            E.to_torch_qweight(m.weight, m.weight_scale, m.weight_zero_point), m.bias
        )
        expected = ao(x)
    assert torch.equal(run(m, engine, x), expected)


def test_float16_weights_compute_in_float32():
    f, m = make_dynamic(qconfig=float16_dynamic_qconfig)
    assert m.weight.dtype == torch.float16 and "weight_scale" not in m.state_dict()
    x = torch.randn(3, 16)
    expected = x @ f.weight.detach().half().float().t() + f.bias.detach()
    assert torch.equal(run(m, "reference", x), expected)
    assert torch.equal(run(m, "int_mm", x), expected)


@pytest.mark.parametrize("engine", native_params(["fbgemm", "x86"]))
def test_float16_native_engine_close_to_reference(engine):
    _, m = make_dynamic(qconfig=float16_dynamic_qconfig)
    x = torch.randn(3, 16)
    assert torch.allclose(run(m, engine, x), run(m, "reference", x), atol=1e-5)


@pytest.mark.parametrize("engine", native_params(["qnnpack"]))
def test_float16_on_an_engine_without_fp16_kernels_is_unavailable(engine):
    _, m = make_dynamic(qconfig=float16_dynamic_qconfig)
    with pytest.raises(E.EngineUnavailable, match=engine):
        run(m, engine, torch.randn(2, 16))


@pytest.mark.parametrize(
    "engine,qconfig",
    [
        ("reference", per_channel_dynamic_qconfig),
        ("int_mm", per_channel_dynamic_qconfig),
        ("int_mm", float16_dynamic_qconfig),
    ],
)
def test_script_trace_export_round_trip_give_identical_outputs(engine, qconfig):
    _, m = make_dynamic(qconfig=qconfig)
    x = torch.randn(3, 16)
    eager = run(m, engine, x)
    for loaded in (
        script_roundtrip(m, engine),
        trace_roundtrip(m, (x,), engine),
        export_roundtrip(m, (x,), engine),
    ):
        assert torch.equal(loaded(x), eager)


def test_version_1_state_dict_is_migrated():
    _, m = make_dynamic()
    old = OrderedDict(
        weight=m.weight.clone(),
        weight_qparams=torch.stack([m.weight_scale.double(), m.weight_zero_point.double()]),
        bias=m.bias.clone(),
    )
    old._metadata = OrderedDict({"": {"version": 1}})
    fresh = qnn.DynamicLinear(16, 8)
    fresh.load_state_dict(old)
    x = torch.randn(2, 16)
    assert torch.equal(fresh(x), m(x))


@pytest.mark.parametrize(
    "x,name",
    [(torch.zeros(2, 16, dtype=torch.uint8), "x"), (torch.zeros(2, 15), "x")],
)
def test_bad_input_raises_value_error_naming_the_argument(x, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        make_dynamic()[1](x)


def test_bad_weight_dtype_raises_value_error():
    with pytest.raises(ValueError, match=r"^weight_dtype:"):
        qnn.DynamicLinear(4, 2, weight_dtype=torch.uint8)


# ----------------------------------------------------------------------------- LSTM


@pytest.mark.parametrize(
    "kw", [{}, {"num_layers": 2, "bidirectional": True}, {"batch_first": True, "bias": False}]
)
def test_lstm_int_mm_is_bit_identical_to_reference(kw):
    _, m = make_lstm(**kw)
    x = torch.randn(2, 4, 6) if kw.get("batch_first") else torch.randn(4, 2, 6)
    ref_out, (ref_h, ref_c) = run(m, "reference", x)
    out, (h, c) = run(m, "int_mm", x)
    assert torch.equal(out, ref_out) and torch.equal(h, ref_h) and torch.equal(c, ref_c)


@pytest.mark.parametrize("kw", [{}, {"num_layers": 2, "bidirectional": True}])
def test_lstm_shapes_match_torch_and_values_approximate_it(kw):
    f, m = make_lstm(**kw)
    x = torch.randn(4, 2, 6)
    h0 = (torch.randn(f.num_layers * (2 if f.bidirectional else 1), 2, 5),) * 2
    out, (h, c) = run(m, "reference", x, h0)
    f_out, (f_h, f_c) = f(x, h0)
    assert out.shape == f_out.shape and h.shape == f_h.shape and c.shape == f_c.shape
    assert (out - f_out).abs().max() < 0.05


@pytest.mark.parametrize("engine", native_params(["fbgemm", "x86", "onednn"]))
def test_lstm_native_engine_close_to_reference(engine):
    # Same weights, same activation qparams (reduce_range by default), same integer GEMMs:
    # only the float epilogue rounds differently.
    _, m = make_lstm(num_layers=2)
    assert all(cell.ih.reduce_range and cell.hh.reduce_range for cell in m.cells)
    x = torch.randn(3, 2, 6)
    assert torch.allclose(run(m, engine, x)[0], run(m, "reference", x)[0], atol=1e-5)


def _growing_sequence(batch_first=False):
    # the repro input: step t is scaled by t + 1, so per-step qparams and one set of
    # qparams for the whole sequence quantize the early steps very differently
    x = torch.randn(5, 2, 3) * torch.arange(1, 6).reshape(5, 1, 1)
    return x.transpose(0, 1).contiguous() if batch_first else x


@pytest.mark.parametrize(
    "kw", [{}, {"num_layers": 2, "bidirectional": True}, {"batch_first": True}]
)
@pytest.mark.parametrize("engine", native_params(E.NATIVE_ENGINES))
def test_lstm_equals_torch_ao_dynamic_lstm_bit_for_bit_on_every_native_engine(engine, kw):
    # torch's CPU quantized LSTM projects a layer's whole input sequence with one set of
    # run-time qparams and always reduces the activation range (ignored by qnnpack); qbc's
    # defaults do the same, so output, h_n and c_n are torch.ao's exactly.
    torch.manual_seed(0)
    f = torch.nn.LSTM(3, 4, **kw)
    x = _growing_sequence(kw.get("batch_first", False))
    with E.native_backend(engine), compat.expected_torch_deprecations():
        import torch.ao.nn.quantized.dynamic as nnqd
        from torch.ao.quantization import default_dynamic_qconfig as ao_qconfig

        f.qconfig = ao_qconfig
        out_ao, (h_ao, c_ao) = nnqd.LSTM.from_float(f)(x)
    f.qconfig = default_dynamic_qconfig
    out, (h, c) = run(qnn.LSTM.from_float(f), engine, x)
    assert torch.equal(out, out_ao) and torch.equal(h, h_ao) and torch.equal(c, c_ao)


def test_lstm_projects_the_whole_input_sequence_with_one_set_of_qparams():
    # ih of every step equals ih applied to the flattened sequence (one activation scale),
    # not to each step alone; the growing input makes the two differ by ~0.01
    _, m = make_lstm()
    x = torch.randn(4, 2, 6) * torch.arange(1, 5).reshape(4, 1, 1)
    ih = m.cells[0].ih
    whole = run(ih, "reference", x.reshape(8, 6)).reshape(4, 2, -1)
    per_step = torch.stack([run(ih, "reference", x[t]) for t in range(4)])
    assert not torch.equal(whole, per_step)
    # h_1 from the whole-sequence projection of step 0 and the recurrent projection of h_0 = 0
    gates = whole[0] + run(m.cells[0].hh, "reference", torch.zeros(2, 5))
    # c_0 = 0, so the forget gate drops out: c_1 = sigmoid(i) * tanh(g)
    i, _, g, o = gates.chunk(4, 1)
    h1 = torch.sigmoid(o) * torch.tanh(torch.sigmoid(i) * torch.tanh(g))
    assert torch.equal(run(m, "reference", x)[0][0], h1)


def test_lstm_from_float_reduces_the_activation_range_by_default_like_torch_ao():
    _, m = make_lstm()
    assert all(cell.ih.reduce_range and cell.hh.reduce_range for cell in m.cells)
    assert qnn.LSTM(6, 5).cells[0].ih.reduce_range  # a fresh module loads the same state
    f, _ = make_lstm()
    assert not qnn.LSTM.from_float(f, reduce_range=False).cells[0].ih.reduce_range


def test_lstm_script_and_trace_round_trip():
    _, m = make_lstm(num_layers=2, bidirectional=True)
    x = torch.randn(3, 2, 6)
    eager = run(m, "int_mm", x)[0]
    for loaded in (script_roundtrip(m, "int_mm"), trace_roundtrip(m, (x,), "int_mm")):
        assert torch.equal(loaded(x)[0], eager)


def test_lstm_export_round_trip():
    # Export unrolls the time loop (static shapes); a short single-layer sequence keeps the
    # export fast (a 2-layer bidirectional one over 3 steps takes ~20 s to export).
    _, m = make_lstm()
    x = torch.randn(2, 2, 6)
    loaded = export_roundtrip(m, (x,), "int_mm")
    assert torch.equal(loaded(x)[0], run(m, "int_mm", x)[0])


def test_lstm_state_dict_round_trip_and_keys():
    _, m = make_lstm()
    sd = m.state_dict()
    assert {"cells.0.ih.weight", "cells.0.ih.weight_scale", "cells.0.hh.bias"} <= set(sd)
    fresh = qnn.LSTM(6, 5)
    fresh.load_state_dict(sd)
    x = torch.randn(3, 2, 6)
    assert torch.equal(fresh(x)[0], m(x)[0])


def test_lstm_rejects_unbatched_input():
    with pytest.raises(ValueError, match=r"^input:"):
        make_lstm()[1](torch.randn(3, 6))
