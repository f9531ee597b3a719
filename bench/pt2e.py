"""Time qbc's export-based flow (prepare + calibrate + convert) next to torchao's, same run.

Scenarios:

* ``linear5x5_dynamic``: the 5x5 ``nn.Linear`` of torch's pt2e ``test_speed``: an embedding
  quantizer composed with a dynamic per-channel symmetric quantizer, prepared for QAT.
* ``conv_linear_20_static``: 10 conv2d + 10 linear layers, static per-channel PTQ with
  histogram activation observers.

``torch.export`` is excluded from the timings (both flows consume the same exported graph);
each repeat exports afresh because prepare transforms the graph in place. The ratio is
qbc / torchao (below 1: qbc is faster). With torchao present the bench also checks parity: both
flows quantize the same float model, and it prints whether the converted graphs have the same
op counts and the largest output difference.

torchao is a benchmark-only comparison, never a dependency: run this with an interpreter that
has it (``/work/venv-bench/bin/python bench/pt2e.py``); without torchao the column is skipped.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

import harness  # noqa: F401  (registers quantized_decomposed ops)
from harness.quant import pt2e as qbc


class Linear5(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class ConvLinear20(torch.nn.Module):
    """10 conv + 10 linear layers on an 8-channel 8x8 input."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(8, 8, 3, padding=1) for _ in range(10))
        self.linears = torch.nn.ModuleList(
            [torch.nn.Linear(512, 64)] + [torch.nn.Linear(64, 64) for _ in range(9)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x))
        x = x.flatten(1)
        for linear in self.linears:
            x = torch.relu(linear(x))
        return x


def _qbc_flows() -> dict[str, Callable[[torch.fx.GraphModule, tuple], Any]]:
    def linear5(gm: torch.fx.GraphModule, inputs: tuple) -> Any:
        dynamic = qbc.SymmetricQuantizer().set_global(
            qbc.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
        )
        quantizer = qbc.ComposableQuantizer([qbc.EmbeddingQuantizer(), dynamic])
        gm = qbc.prepare_qat_pt2e(gm, quantizer)
        gm(*inputs)
        return qbc.convert_pt2e(gm)

    def static(gm: torch.fx.GraphModule, inputs: tuple) -> Any:
        quantizer = qbc.SymmetricQuantizer().set_global(
            qbc.get_symmetric_quantization_config(is_per_channel=True)
        )
        gm = qbc.prepare_pt2e(gm, quantizer)
        gm(*inputs)
        return qbc.convert_pt2e(gm)

    return {"linear5x5_dynamic": linear5, "conv_linear_20_static": static}


def _torchao_flows() -> dict[str, Callable[[torch.fx.GraphModule, tuple], Any]] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization.pt2e.quantize_pt2e import (
                convert_pt2e,
                prepare_pt2e,
                prepare_qat_pt2e,
            )
            from torchao.quantization.pt2e.quantizer import ComposableQuantizer
            from torchao.quantization.pt2e.quantizer.embedding_quantizer import (
                EmbeddingQuantizer,
            )
            from torchao.testing.pt2e._xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
    except ImportError:
        return None

    def linear5(gm: torch.fx.GraphModule, inputs: tuple) -> Any:
        dynamic = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
        )
        gm = prepare_qat_pt2e(gm, ComposableQuantizer([EmbeddingQuantizer(), dynamic]))
        gm(*inputs)
        return convert_pt2e(gm)

    def static(gm: torch.fx.GraphModule, inputs: tuple) -> Any:
        quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True)
        )
        gm = prepare_pt2e(gm, quantizer)
        gm(*inputs)
        return convert_pt2e(gm)

    return {"linear5x5_dynamic": linear5, "conv_linear_20_static": static}


SCENARIOS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[], tuple]]] = {
    "linear5x5_dynamic": (lambda: Linear5().eval(), lambda: (torch.randn(5, 5),)),
    "conv_linear_20_static": (lambda: ConvLinear20().eval(), lambda: (torch.randn(1, 8, 8, 8),)),
}


def _time(flow: Callable, make: Callable, inputs: tuple, repeats: int) -> float:
    """Median seconds of prepare + calibrate + convert (export excluded)."""
    times = []
    for _ in range(repeats):
        torch.manual_seed(0)
        gm = torch.export.export(make(), inputs).module()
        start = time.perf_counter()
        with warnings.catch_warnings():
            # torchao's XNNPACKQuantizer announces its own deprecation on every use.
            warnings.simplefilter("ignore")
            flow(gm, inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _parity(ours: Callable, theirs: Callable, make: Callable, inputs: tuple) -> str:
    """Same float weights through both flows: equal op counts? largest output difference?"""
    from collections import Counter

    torch.manual_seed(1)
    model = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ours(torch.export.export(model, inputs).module(), inputs)
        b = theirs(torch.export.export(model, inputs).module(), inputs)

    def ops(gm: torch.fx.GraphModule) -> Counter:
        return Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")

    diff = (a(*inputs) - b(*inputs)).abs().max().item()
    return f"same ops={ops(a) == ops(b)}, max|diff|={diff:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a shared 2-core machine: keep both flows on one thread
    ours = _qbc_flows()
    theirs = _torchao_flows()
    print(f"torch {torch.__version__}, threads=1, median of {args.repeats}, export excluded")
    if theirs is None:
        print(
            "torchao is not installed in this interpreter: torchao column skipped "
            "(run with /work/venv-bench/bin/python to compare)"
        )
    else:
        import torchao

        print(f"torchao {torchao.__version__}")
    print(f"{'scenario':<24}{'qbc ms':>10}{'torchao ms':>12}{'qbc/torchao':>13}")
    for name, (make, make_inputs) in SCENARIOS.items():
        inputs = make_inputs()
        # one untimed warm-up of each flow (first-call imports and op registration)
        _time(ours[name], make, inputs, 1)
        t_qbc = _time(ours[name], make, inputs, args.repeats)
        row = f"{name:<24}{t_qbc * 1e3:>10.1f}"
        if theirs is not None:
            _time(theirs[name], make, inputs, 1)
            t_ao = _time(theirs[name], make, inputs, args.repeats)
            row += f"{t_ao * 1e3:>12.1f}{t_qbc / t_ao:>13.2f}  "
            row += _parity(ours[name], theirs[name], make, inputs)
        else:
            row += f"{'-':>12}{'-':>13}"
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
