"""The x86 / Inductor preset: uint8 activations, int8 per-channel weights, and what Inductor
makes of a graph quantized with it."""

import re
import shutil

import pytest
import torch
from pt2e_models import quantize

from harness import isa
from harness.compat import expected_torch_deprecations
from harness.quant.pt2e import SymmetricQuantizer, get_x86_inductor_quantization_config
from harness.quant.pt2e.graph_summary import contains_in_order

qd = torch.ops.quantized_decomposed
aten = torch.ops.aten
Q, DQ = qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default
DQ_CH = qd.dequantize_per_channel.default


class ConvReluConv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(8, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))


def x86(**kwargs):
    return SymmetricQuantizer().set_global(get_x86_inductor_quantization_config(**kwargs))


@pytest.mark.parametrize(("reduce_range", "act_max"), [(False, 255), (True, 127)])
def test_x86_preset_quantizes_activations_to_uint8_and_weights_to_int8_per_channel(
    reduce_range, act_max
):
    inputs = (torch.randn(2, 3, 8, 8),)
    m = quantize(ConvReluConv().eval(), x86(reduce_range=reduce_range), inputs)
    acts = [n for n in m.graph.nodes if n.target in (Q, DQ)]
    assert acts and all(n.args[3:6] == (0, act_max, torch.uint8) for n in acts)
    weights = [n for n in m.graph.nodes if n.target == DQ_CH]
    # axis 0 (output channels) of each conv weight, the full int8 range
    assert len(weights) == 2 and all(n.args[3:7] == (0, -128, 127, torch.int8) for n in weights)
    assert contains_in_order(m, [DQ, DQ_CH, aten.conv2d.default, aten.relu.default, Q, DQ])


def test_x86_preset_is_cached_like_the_symmetric_configs():
    assert get_x86_inductor_quantization_config() is get_x86_inductor_quantization_config()


@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("clang++") is None,
    reason="Inductor's CPU backend needs a C++ compiler (g++ or clang++)",
)
def test_inductor_with_freezing_lowers_the_converted_conv_model_to_onednn_quantized_kernels():
    from torch._inductor import config as inductor_config
    from torch._inductor.utils import run_and_get_code

    inputs = (torch.randn(2, 3, 8, 8),)
    m = quantize(ConvReluConv().eval(), x86(), inputs)
    expected = m(*inputs)
    torch._dynamo.reset()
    try:
        # Inductor's CPU passes import torch.utils.mkldnn, which uses torch.jit.script_method
        with torch.no_grad(), inductor_config.patch(freezing=True), expected_torch_deprecations():
            out, code = run_and_get_code(torch.compile(m), *inputs)
    finally:
        torch._dynamo.reset()
    kernels = set(re.findall(r"torch\.ops\.onednn\.(\w+)", "\n".join(code)))
    # both convs became oneDNN quantized convolutions (the relu fused into the first)
    assert "qconv_pointwise" in kernels or "qconv2d_pointwise" in kernels
    assert "convolution" not in "\n".join(code)
    # oneDNN requantizes its own way: within one output step of the reference graph. Below
    # AVX512-VNNI its u8 x s8 convolution adds pairs of products in saturating int16
    # (vpmaddubsw), as fbgemm's AVX2 kernels do, so a large pair clips: measured 8.006 steps on
    # this model and input with oneDNN capped to AVX2, hence 10 (the x86 preset does not reduce
    # the activation range, as torch's X86InductorQuantizer does not either)
    out_scale = [n for n in m.graph.nodes if n.target == Q][-1].args[1]
    steps = 1 if isa.rank(isa.machine_class()) >= isa.rank("avx512_vnni") else 10
    assert (out - expected).abs().max() <= steps * out_scale
