"""Accuracy of qbc's export-based flow next to torchao 0.18's, on the same float models.

Figures (issue #14):

* ``pool``: Conv-BN-ReLU-AvgPool2d-Flatten-Linear (``ConvBnReluPoolLinear`` of
  tests/pt2e/pt2e_models.py; also with AdaptiveAvgPool2d(1) and MaxPool2d(2)), PTQ with each
  flow's default symmetric config (per tensor), calibrated and evaluated on 8 random images:
  SQNR of the quantized output against the float model, in dB (higher is better), per seed.
* ``qat_conv_transpose_bn``: ConvTranspose2d(3, 4, 3) -> BatchNorm2d(4), QAT (per tensor),
  ``steps`` training-mode forwards, eval, convert: the largest output difference between the
  two flows in output quantization steps (torchao's output scale), the share of elements that
  differ, and whether each graph is ``dq -> conv_transpose2d -> q`` without batch_norm or add_.

torchao is a comparison, never a dependency: run this with an interpreter that has it, e.g.
``python -m venv /tmp/ao && /tmp/ao/bin/pip install torch==2.13.0 'torchao==0.18.*' numpy &&
/tmp/ao/bin/pip install --no-deps -e . && /tmp/ao/bin/python bench/pt2e_vs_torchao.py``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import harness  # noqa: F401  (registers quantized_decomposed ops)
from harness.quant import pt2e as qbc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "pt2e"))
from pt2e_models import ConvBnReluPoolLinear

aten = torch.ops.aten
Q = torch.ops.quantized_decomposed.quantize_per_tensor.default


def torchao_flow() -> dict[str, Any] | None:
    """torchao's pt2e entry points and XNNPACK quantizer, or None without torchao."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization.pt2e import move_exported_model_to_eval
            from torchao.quantization.pt2e.quantize_pt2e import (
                convert_pt2e,
                prepare_pt2e,
                prepare_qat_pt2e,
            )
            from torchao.testing.pt2e._xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
    except ImportError:
        return None
    return {
        "prepare_pt2e": prepare_pt2e,
        "prepare_qat_pt2e": prepare_qat_pt2e,
        "convert_pt2e": convert_pt2e,
        "move_exported_model_to_eval": move_exported_model_to_eval,
        "quantizer": lambda **cfg: XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(**cfg)
        ),
    }


def qbc_flow() -> dict[str, Any]:
    return {
        "prepare_pt2e": qbc.prepare_pt2e,
        "prepare_qat_pt2e": qbc.prepare_qat_pt2e,
        "convert_pt2e": qbc.convert_pt2e,
        "move_exported_model_to_eval": qbc.move_exported_model_to_eval,
        "quantizer": lambda **cfg: qbc.SymmetricQuantizer().set_global(
            qbc.get_symmetric_quantization_config(**cfg)
        ),
    }


def sqnr(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """``20 log10(|ref| / |ref - approx|)`` in dB."""
    noise = (reference - approximation).norm()
    return float(20 * torch.log10(reference.norm() / noise))


def ptq(flow: dict[str, Any], model: torch.nn.Module, inputs: tuple) -> torch.fx.GraphModule:
    gm = torch.export.export(copy.deepcopy(model), inputs).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchao's XNNPACKQuantizer announces its deprecation
        gm = flow["prepare_pt2e"](gm, flow["quantizer"]())
        gm(*inputs)
        return flow["convert_pt2e"](gm)


def qat(
    flow: dict[str, Any], model: torch.nn.Module, inputs: tuple, steps: int
) -> torch.fx.GraphModule:
    gm = torch.export.export(copy.deepcopy(model).train(), inputs).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = flow["prepare_qat_pt2e"](gm, flow["quantizer"](is_qat=True))
        for _ in range(steps):
            gm(*inputs)
        flow["move_exported_model_to_eval"](gm)
        return flow["convert_pt2e"](gm)


def pool_model(seed: int, pool: str) -> tuple[torch.nn.Module, tuple]:
    torch.manual_seed(seed)
    pools: dict[str, Callable[[], torch.nn.Module]] = {
        "avg": lambda: torch.nn.AvgPool2d(2),
        "adaptive": lambda: torch.nn.AdaptiveAvgPool2d(4),
        "max": lambda: torch.nn.MaxPool2d(2),
    }
    model = ConvBnReluPoolLinear(pools[pool]()).eval()
    return model, (torch.randn(8, 3, 8, 8),)


def pool_sqnr(flow: dict[str, Any], seed: int, pool: str) -> float:
    model, inputs = pool_model(seed, pool)
    quantized = ptq(flow, model, inputs)
    with torch.no_grad():
        return sqnr(model(*inputs), quantized(*inputs))


def conv_transpose_bn(seed: int) -> tuple[torch.nn.Module, tuple]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.ConvTranspose2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    return model, (torch.randn(2, 3, 6, 6),)


def folded(gm: torch.fx.GraphModule) -> bool:
    """``dq -> conv_transpose2d -> q`` with no batch_norm and no add_ left."""
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    conv = next(n for n in gm.graph.nodes if n.target == aten.conv_transpose2d.input)
    dq_in = conv.args[0].target == torch.ops.quantized_decomposed.dequantize_per_tensor.default
    q_out = next(iter(conv.users)).target == Q
    return (
        dq_in
        and q_out
        and aten.batch_norm.default not in targets
        and aten.add_.Tensor not in targets
    )


def qat_agreement(ours: dict, theirs: dict, seed: int, steps: int) -> tuple[float, float, str]:
    """(max |diff| in torchao output steps, share of elements that differ, graphs folded?)."""
    model, inputs = conv_transpose_bn(seed)
    a, b = qat(ours, model, inputs, steps), qat(theirs, model, inputs, steps)
    step = [n for n in b.graph.nodes if n.target == Q][-1].args[1]
    diff = (a(*inputs) - b(*inputs)).abs() / step
    return diff.max().item(), (diff > 0.5).float().mean().item(), f"{folded(a)}/{folded(b)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1, help="QAT forwards before convert")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ours, theirs = qbc_flow(), torchao_flow()
    if theirs is None:
        print("torchao is not installed in this interpreter (see the module docstring)")
        return 1
    import torchao

    print(f"torch {torch.__version__}, torchao {torchao.__version__}")
    print("PTQ SQNR vs float (dB), default symmetric per-tensor config")
    print(f"{'pool':<10}{'seed':>5}{'qbc':>9}{'torchao':>9}{'qbc-ao':>9}")
    for pool in ("avg", "adaptive", "max"):
        for seed in range(args.seeds):
            a, b = pool_sqnr(ours, seed, pool), pool_sqnr(theirs, seed, pool)
            print(f"{pool:<10}{seed:>5}{a:>9.2f}{b:>9.2f}{a - b:>9.2f}")
    print(f"QAT ConvTranspose2d -> BatchNorm2d, {args.steps} step(s), per-tensor config")
    print(f"{'seed':>5}{'max steps':>11}{'differ':>9}  folded qbc/torchao")
    for seed in range(args.seeds):
        worst, share, fold = qat_agreement(ours, theirs, seed, args.steps)
        print(f"{seed:>5}{worst:>11.4f}{share:>9.2%}  {fold}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
