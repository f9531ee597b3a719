"""Static quantized Linear / LinearReLU: engines agree, serialization, state versions, inputs."""

from collections import OrderedDict

import pytest
import torch
from quant_support import NATIVE

from harness import compat
from harness.quant import engines as E
from harness.quant import nn as qnn
from harness.quant.nn.testing import (
    export_roundtrip,
    exported_ops,
    script_roundtrip,
    trace_roundtrip,
)
from harness.quant.qconfig import get_default_qconfig

CLASSES = [qnn.Linear, qnn.LinearReLU]


def make_linear(cls, k, n, seed=0, per_channel=True, bias=True, w_zp=0):
    """A module with seeded int8 weights (symmetric unless ``w_zp``), per-channel scales."""
    gen = torch.Generator().manual_seed(seed)
    m = cls(k, n, bias=bias)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    scales = 0.001 + 0.01 * torch.rand(n if per_channel else 1, generator=gen)
    zps = torch.full_like(scales, w_zp, dtype=torch.int64)
    b = torch.randn(n, generator=gen) if bias else None
    m.set_weight_bias(w, scales, zps, b)
    # output scale chosen so outputs span a good part of the uint8 range
    m.set_output_qparams(0.02 * (k**0.5) / 8, 100)
    return m


def make_input(shape, seed=1, high=256, zp=60):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, high, shape, dtype=torch.uint8, generator=gen)
    return q, torch.tensor([0.05]), torch.tensor([zp])


def run(m, engine, args):
    with E.use_engine(engine):
        return m(*args)[0]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    "shape,k,n", [((1, 8), 8, 4), ((5, 33), 33, 17), ((2, 3, 64), 64, 40), ((16,), 16, 3)]
)
@pytest.mark.parametrize("per_channel", [True, False])
def test_int_mm_is_bit_identical_to_reference(cls, shape, k, n, per_channel):
    m = make_linear(cls, k, n, per_channel=per_channel, w_zp=0 if per_channel else 3)
    args = make_input(shape)
    ref = run(m, "reference", args)
    assert ref.shape == (*shape[:-1], n)
    assert torch.equal(run(m, "int_mm", args), ref)


def test_int8_activations_are_bit_identical_too():
    m = qnn.Linear(12, 5, dtype=torch.int8)
    gen = torch.Generator().manual_seed(4)
    m.set_weight_bias(
        torch.randint(-128, 128, (5, 12), dtype=torch.int8, generator=gen),
        torch.full((5,), 0.01),
        torch.zeros(5, dtype=torch.int64),
        torch.randn(5, generator=gen),
    )
    m.set_output_qparams(0.03, -3)
    x = torch.randint(-128, 128, (6, 12), dtype=torch.int8, generator=gen)
    args = (x, torch.tensor([0.04]), torch.tensor([2]))
    assert torch.equal(run(m, "int_mm", args), run(m, "reference", args))
    assert run(m, "reference", args).dtype == torch.int8


def test_reference_output_matches_the_float_computation_within_one_step():
    # The spec rounds once (plus the integer bias): |dequant(q_y) - y_float| <= s_y (one step),
    # where y_float is computed from the dequantized inputs and weights.
    m = make_linear(qnn.Linear, 32, 8)
    q, s, z = make_input((4, 32))
    y = run(m, "reference", (q, s, z))
    x_f = (q.float() - z) * s
    w_f = m.weight.float() * m.weight_scale[:, None]
    y_f = x_f @ w_f.t() + m.bias
    y_deq = (y.float() - m.zero_point) * m.scale
    inside = (y > 0) & (y < 255)  # saturated codes are clamped, not rounded
    assert (y_deq - y_f)[inside].abs().max() <= m.scale * (1 + 1e-4)


def test_linear_relu_clamps_at_the_output_zero_point():
    m = make_linear(qnn.LinearReLU, 16, 8)
    plain = make_linear(qnn.Linear, 16, 8)
    args = make_input((6, 16))
    y = run(m, "reference", args)
    assert int(y.min()) >= int(m.zero_point)
    assert torch.equal(y, torch.clamp(run(plain, "reference", args), min=int(m.zero_point)))


@pytest.mark.parametrize("engine", NATIVE)
@pytest.mark.parametrize("cls", CLASSES)
def test_native_engine_within_one_step_of_reference(engine, cls):
    # Codes in [0, 127] (reduce_range): fbgemm/x86/onednn on AVX2 add u8*s8 pairs in int16 and
    # saturate on full-range uint8 input, which is why their qconfigs use reduce_range.
    m = make_linear(cls, 48, 24)
    args = make_input((7, 48), high=128)
    diff = (run(m, engine, args).int() - run(m, "reference", args).int()).abs()
    assert int(diff.max()) <= 1


@pytest.mark.parametrize("engine", NATIVE)
@pytest.mark.parametrize("cls", CLASSES)
def test_native_engine_equals_torch_ao_module(engine, cls):
    # Differential: torch.ao's quantized module, given the same integer weights and qparams,
    # computes exactly what our native-engine path computes.
    m = make_linear(cls, 20, 6, seed=5)
    q, s, z = make_input((3, 20), high=128)
    with E.native_backend(engine), compat.expected_torch_deprecations():
        import torch.ao.nn.intrinsic.quantized as nniq
        import torch.ao.nn.quantized as nnq

        ao = (nniq.LinearReLU if cls is qnn.LinearReLU else nnq.Linear)(20, 6)
        ao.set_weight_bias(
            E.to_torch_qweight(m.weight, m.weight_scale, m.weight_zero_point), m.bias
        )
        ao.scale, ao.zero_point = float(m.scale), int(m.zero_point)
        expected = ao(E.to_torch_qtensor(q, s, z)).int_repr()
    assert torch.equal(run(m, engine, (q, s, z)), expected)


def test_torch_ao_default_module_weights_are_not_ours():
    # torch.ao leaves a fresh module's weights uninitialized; ours are deterministic zeros,
    # so two fresh modules always compute the same thing.
    a, b = qnn.Linear(4, 3), qnn.Linear(4, 3)
    args = make_input((2, 4))
    assert torch.equal(a(*args)[0], b(*args)[0])
    assert a.weight.abs().sum() == 0


@pytest.mark.parametrize("cls", CLASSES)
def test_from_float_uses_qconfig_and_output_observer(cls):
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    f = torch.nn.Sequential(lin, torch.nn.ReLU()) if cls is qnn.LinearReLU else lin
    f.qconfig = get_default_qconfig("reference")
    f.activation_post_process = f.qconfig.activation()
    x = torch.randn(32, 16)
    f.activation_post_process(f(x))
    m = cls.from_float(f)
    w_obs = f.qconfig.weight()
    w_obs(lin.weight)
    w_scale, _ = w_obs.calculate_qparams()
    assert torch.allclose(m.weight_scale, w_scale.float())
    y_scale, y_zp = f.activation_post_process.calculate_qparams()
    assert torch.equal(m.scale, y_scale.float().reshape(1))
    assert int(m.zero_point) == int(y_zp)
    # and it approximates the float module on the calibration data
    quant = qnn.Quantize(0.03, 128)
    out = qnn.DeQuantize()(*m(*quant(x)))
    assert (out - f(x)).abs().max() < 0.1


def test_from_float_without_observer_names_the_problem():
    f = torch.nn.Linear(4, 2)
    f.qconfig = get_default_qconfig("reference")
    with pytest.raises(ValueError, match="activation_post_process"):
        qnn.Linear.from_float(f)


def test_linear_relu_from_float_needs_a_fused_module():
    f = torch.nn.Linear(4, 2)
    f.qconfig = get_default_qconfig("reference")
    with pytest.raises(ValueError, match="float_module"):
        qnn.LinearReLU.from_float(f)


# Each round trip costs seconds: both engines for Linear, int_mm for LinearReLU.
@pytest.mark.parametrize(
    "engine,cls",
    [("reference", qnn.Linear), ("int_mm", qnn.Linear), ("int_mm", qnn.LinearReLU)],
)
def test_script_trace_export_round_trip_give_identical_outputs(engine, cls):
    m = make_linear(cls, 24, 10)
    args = make_input((3, 24))
    eager = run(m, engine, args)
    other = make_input((5, 24), seed=9)  # a second input: the graphs generalize
    for loaded in (
        script_roundtrip(m, engine),
        trace_roundtrip(m, args, engine),
        export_roundtrip(m, args, engine),
    ):
        assert torch.equal(loaded(*args)[0], eager)
        if not isinstance(loaded, torch.fx.GraphModule):  # exported shapes are static
            assert torch.equal(loaded(*other)[0], run(m, engine, other))


def test_scripted_module_computes_with_its_engine_attribute():
    # TorchScript cannot see use_engine(): "" computes reference; the attribute stays settable.
    m = make_linear(qnn.Linear, 8, 4)
    args = make_input((2, 8))
    with compat.expected_torch_deprecations():
        scripted = torch.jit.script(m)
    assert scripted.engine == "" and m.engine == ""  # scripting does not pin the eager module
    assert torch.equal(scripted(*args)[0], run(m, "reference", args))
    scripted.engine = "int_mm"
    assert torch.equal(scripted(*args)[0], run(m, "int_mm", args))
    assert script_roundtrip(m, "int_mm").engine == "int_mm"
    assert m.engine == ""


def test_exported_graph_has_no_data_dependent_ops():
    ops = exported_ops(make_linear(qnn.Linear, 8, 4), make_input((2, 8)), "int_mm")
    assert "aten._int_mm.default" in ops
    assert not [op for op in ops if "local_scalar" in op or "item" in op]


@pytest.mark.parametrize("engine", NATIVE)
def test_native_engines_refuse_script_and_trace(engine):
    m = make_linear(qnn.Linear, 8, 4)
    with pytest.raises(ValueError, match="engine"):
        script_roundtrip(m, engine)
    with pytest.raises(ValueError, match="engine"):
        trace_roundtrip(m, make_input((2, 8)), engine)


def test_outputs_are_deterministic_across_calls():
    m = make_linear(qnn.Linear, 64, 32)
    args = make_input((8, 64))
    assert torch.equal(run(m, "int_mm", args), run(m, "int_mm", args))


# ----------------------------------------------------------------------------- state_dict


def test_state_dict_keys_and_dtypes():
    sd = make_linear(qnn.Linear, 6, 4).state_dict()
    assert {k: v.dtype for k, v in sd.items()} == {
        "weight": torch.int8,
        "weight_scale": torch.float32,
        "weight_zero_point": torch.int64,
        "bias": torch.float32,
        "scale": torch.float32,
        "zero_point": torch.int64,
    }
    assert sd._metadata[""]["version"] == qnn.Linear._version == 2


def test_state_dict_round_trip_into_a_fresh_module():
    m = make_linear(qnn.Linear, 6, 4)
    fresh = qnn.Linear(6, 4)  # per-tensor default qparams: loading adopts per-channel ones
    fresh.load_state_dict(m.state_dict())
    args = make_input((3, 6))
    assert torch.equal(fresh(*args)[0], m(*args)[0])


def test_state_dict_without_bias_loads_into_a_module_without_bias():
    m = make_linear(qnn.Linear, 6, 4, bias=False)
    assert "bias" not in m.state_dict()
    fresh = qnn.Linear(6, 4, bias=False)
    fresh.load_state_dict(m.state_dict())
    args = make_input((3, 6))
    assert torch.equal(fresh(*args)[0], m(*args)[0])


def test_version_1_state_dict_is_migrated():
    # Hand-built version-1 layout: weight qparams as one float64 [2, C] tensor, output qparams
    # as 0-dim output_scale / output_zero_point.
    m = make_linear(qnn.Linear, 6, 4)
    old = OrderedDict(
        weight=m.weight.clone(),
        weight_qparams=torch.stack([m.weight_scale.double(), m.weight_zero_point.double()]),
        bias=m.bias.clone(),
        output_scale=m.scale.double().reshape(()),
        output_zero_point=m.zero_point.reshape(()),
    )
    old._metadata = OrderedDict({"": {"version": 1}})
    fresh = qnn.Linear(6, 4)
    fresh.load_state_dict(old)
    assert fresh.weight_zero_point.dtype == torch.int64
    assert fresh.scale.shape == (1,)
    args = make_input((3, 6))
    assert torch.equal(fresh(*args)[0], m(*args)[0])


def test_inconsistent_state_dict_is_rejected_naming_the_tensor():
    sd = make_linear(qnn.Linear, 6, 4).state_dict()
    sd["weight_scale"] = torch.ones(3)  # 3 scales for 4 channels
    with pytest.raises(RuntimeError, match="weight_scale"):
        qnn.Linear(6, 4).load_state_dict(sd)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args,name",
    [
        ((torch.zeros(2, 6), 0.1, 0), "x_q"),  # float codes
        ((torch.zeros(2, 6, dtype=torch.int32), 0.1, 0), "x_q"),  # wrong integer dtype
        ((torch.zeros(2, 5, dtype=torch.uint8), 0.1, 0), "x_q"),  # wrong feature size
        ((torch.zeros(2, 6, dtype=torch.uint8), 0.0, 0), "x_scale"),
        ((torch.zeros(2, 6, dtype=torch.uint8), -1.0, 0), "x_scale"),
        ((torch.zeros(2, 6, dtype=torch.uint8), 0.1, 256), "x_zero_point"),
        ((torch.zeros(2, 6, dtype=torch.uint8), 0.1, 0.5), "x_zero_point"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(args, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        make_linear(qnn.Linear, 6, 4)(*args)


@pytest.mark.parametrize(
    "kwargs,name",
    [({"dtype": torch.int32}, "dtype"), ({"engine": "tpu"}, "engine")],
)
def test_bad_constructor_arguments_raise_value_error(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        qnn.Linear(4, 2, **kwargs)


def test_bad_weights_raise_value_error_naming_weight():
    m = qnn.Linear(4, 2)
    with pytest.raises(ValueError, match=r"^weight:"):
        m.set_weight_bias(torch.zeros(2, 4), torch.ones(2), torch.zeros(2), None)
    with pytest.raises(ValueError, match=r"^weight_scale:"):
        m.set_weight_bias(torch.zeros(2, 4, dtype=torch.int8), -torch.ones(2), torch.zeros(2), None)


def test_quantize_and_dequantize_edges():
    quant = qnn.Quantize(0.5, 10)
    q, s, z = quant(torch.tensor([0.0, 1.0, -100.0, 1000.0]))
    assert q.tolist() == [10, 12, 0, 255]  # round(x / 0.5) + 10, saturated
    assert qnn.DeQuantize()(q, s, z).tolist() == [0.0, 1.0, -5.0, 122.5]
    with pytest.raises(ValueError, match=r"^scale:"):
        qnn.Quantize(0.0, 0)
    with pytest.raises(ValueError, match=r"^x:"):
        quant(torch.zeros(2, dtype=torch.int64))


class _QuantizedNet(torch.nn.Module):
    """A composed model as goldens will hold it: float in, Quantize -> ConvReLU2d -> Linear ->
    DeQuantize, float out."""

    def __init__(self):
        super().__init__()
        self.quant = qnn.Quantize(0.05, 64)
        self.conv = qnn.ConvReLU2d(3, 4, 3)
        self.conv.set_weight_bias(
            torch.randint(-127, 128, (4, 3, 3, 3), dtype=torch.int8, generator=_GEN),
            torch.full((4,), 0.01),
            torch.zeros(4, dtype=torch.int64),
            torch.randn(4, generator=_GEN),
        )
        self.conv.set_output_qparams(0.02, 20)
        self.fc = make_linear(qnn.Linear, 4 * 4 * 4, 5, seed=2)
        self.dequant = qnn.DeQuantize()

    def forward(self, x):
        q, s, z = self.conv(*self.quant(x))
        q, s, z = self.fc(q.reshape(q.shape[0], -1), s, z)
        return self.dequant(q, s, z)


_GEN = torch.Generator().manual_seed(11)


def test_composed_model_round_trips_through_every_format():
    net = _QuantizedNet()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    with E.use_engine("int_mm"):
        eager = net(x)
    assert eager.dtype == torch.float32 and eager.shape == (2, 5)
    for loaded in (
        script_roundtrip(net, "int_mm"),
        trace_roundtrip(net, (x,), "int_mm"),
        export_roundtrip(net, (x,), "int_mm"),
    ):
        assert torch.equal(loaded(x), eager)


@pytest.mark.parametrize("engine", [p for p in NATIVE if p.values[0] in ("fbgemm", "x86")])
def test_from_float_with_torch_ao_qconfig_equals_torch_ao_from_float(engine):
    # End to end: the same float module, torch.ao's own qconfig and calibration, then
    # torch.ao's from_float vs ours; same weights, same qparams, same output codes.
    torch.manual_seed(0)
    f = torch.nn.Linear(16, 8)
    x = torch.randn(32, 16)
    with E.native_backend(engine), compat.expected_torch_deprecations():
        import torch.ao.nn.quantized as nnq
        import torch.ao.quantization as tq

        f.qconfig = tq.get_default_qconfig(engine)
        f.activation_post_process = f.qconfig.activation()
        f.activation_post_process(f(x))
        ao = nnq.Linear.from_float(f)
        qx = torch.quantize_per_tensor(x, 0.03, 64, torch.quint8)
        expected = ao(qx).int_repr()
        ours = qnn.Linear.from_float(f)
        assert torch.equal(ours.weight, ao.weight().int_repr())
    args = (qx.int_repr(), torch.tensor([0.03]), torch.tensor([64]))
    assert torch.equal(run(ours, engine, args), expected)


@pytest.mark.parametrize("engine", NATIVE)
def test_module_pickles_and_deep_copies_after_native_use(engine):
    # Native engines cache torch's packed weights on the module; copies and pickles drop the
    # cache (packed params are torch objects, not part of qbc's state) and rebuild it.
    import copy
    import io

    m = make_linear(qnn.Linear, 8, 4)
    args = make_input((2, 8), high=128)
    expected = run(m, engine, args)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    for clone in (copy.deepcopy(m), torch.load(buf, weights_only=False)):
        assert "_native_cache" not in clone.__dict__
        assert torch.equal(run(clone, engine, args), expected)


@pytest.mark.slow  # a fresh interpreter importing torch and torch.export: ~10 s
def test_scripted_and_exported_artifacts_load_without_importing_harness(tmp_path):
    # qbc module graphs hold only aten ops (no custom ops), so a consumer needs nothing but
    # torch to load them: checked in a fresh interpreter that never imports harness.
    import os
    import subprocess
    import sys

    m = make_linear(qnn.Linear, 8, 4).set_engine("int_mm")
    args = make_input((2, 8))
    with compat.expected_torch_deprecations():
        torch.jit.save(torch.jit.script(m), tmp_path / "m.pt")
    torch.export.save(torch.export.export(m, args), tmp_path / "m.pt2")
    torch.save({"args": args, "out": m(*args)[0]}, tmp_path / "io.pt")
    code = (
        "import sys, warnings, torch\n"
        "warnings.simplefilter('ignore')\n"
        f"d = torch.load({str(tmp_path / 'io.pt')!r})\n"
        f"s = torch.jit.load({str(tmp_path / 'm.pt')!r})\n"
        f"e = torch.export.load({str(tmp_path / 'm.pt2')!r}).module()\n"
        "assert 'harness' not in sys.modules\n"
        "assert torch.equal(s(*d['args'])[0], d['out'])\n"
        "assert torch.equal(e(*d['args'])[0], d['out'])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see _one_intra_op_thread
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
