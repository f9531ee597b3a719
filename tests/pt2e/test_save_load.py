"""A converted model exports again, and its .pt2 reloads bit-identically, in a fresh process too."""

import subprocess
import sys
import textwrap

import pytest
import torch
from pt2e_models import LinearModel, quantize, symmetric

from harness.quant.pt2e.graph_summary import op_counts

qd = torch.ops.quantized_decomposed
INPUTS = (torch.randn(2, 2),)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    m = quantize(LinearModel().eval(), symmetric(is_per_channel=True), INPUTS)
    path = tmp_path_factory.mktemp("pt2e") / "linear.pt2"
    torch.export.save(torch.export.export(m, INPUTS), str(path))
    torch.save(INPUTS[0], path.with_suffix(".x"))
    torch.save(m(*INPUTS), path.with_suffix(".y"))
    return m, path


def test_converted_model_exports_with_its_quantize_ops(saved):
    m, _ = saved
    ep = torch.export.export(m, INPUTS)
    counts = op_counts(ep.module())
    assert counts[qd.quantize_per_tensor.default] == 2
    assert counts[qd.dequantize_per_channel.default] == 1


def test_save_load_round_trip_is_bit_identical(saved):
    m, path = saved
    loaded = torch.export.load(str(path)).module()
    assert torch.equal(loaded(*INPUTS), m(*INPUTS))


def test_a_fresh_process_loads_the_pt2_after_import_harness_quant(saved):
    _, path = saved
    script = textwrap.dedent(
        f"""
        import torch
        import harness.quant  # registers the quantized_decomposed ops
        x, y = torch.load({str(path.with_suffix(".x"))!r}), torch.load({str(path.with_suffix(".y"))!r})
        m = torch.export.load({str(path)!r}).module()
        assert torch.equal(m(x), y), "outputs differ"
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
