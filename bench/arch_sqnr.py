"""SQNR vs float of the real-architecture cases: qbc's export flow beside torchao 0.18's.

Same float model (the case row's seeded model), same calibration data, same recipe (int8
activations from a histogram observer, int8 per-channel symmetric weights):

- qbc: ``harness.quant.pt2e`` SymmetricQuantizer, prepare_pt2e / convert_pt2e;
- torchao: ExecuTorch's XNNPACKQuantizer (the same recipe; torchao 0.18 ships no public
  quantizer of its own for it), ``torchao.quantization.pt2e`` prepare_pt2e / convert_pt2e.

Two settings per model: the golden's (calibrate on the stored input, one pass, and measure on
it) and held-out data (calibrate on ``--calib`` seeded batches, measure on ``--eval`` others,
SQNR over all their outputs together: a 10-logit output of one input is a noisy figure).
The baseline is torchao's flow in the same run; the target is qbc >= torchao - 1 dB.
Needs the downstream extra (``pip install torch==2.13.0 -e '.[downstream]'``).

    python bench/arch_sqnr.py [--calib 8] [--eval 8] [--cases pt2e_resnet18 ...]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from harness.cases.qbc_pt2e import ARCHITECTURES, CASES, seeded_float_model
from harness.compat import export_module

TARGET_DB = -1.0


def sqnr_db(actual: torch.Tensor, reference: torch.Tensor) -> float:
    noise = (actual.double() - reference.double()).pow(2).sum().item()
    signal = reference.double().pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def qbc_flow(model: torch.nn.Module, calib: Sequence[tuple[Any, ...]]) -> Callable[..., Any]:
    from harness.quant.pt2e import (
        SymmetricQuantizer,
        convert_pt2e,
        get_symmetric_quantization_config,
        prepare_pt2e,
    )

    gm = export_module(copy.deepcopy(model).eval(), calib[0])
    quantizer = SymmetricQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)
    )
    gm = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for xs in calib:
            gm(*xs)
    return convert_pt2e(gm)


def torchao_flow(model: torch.nn.Module, calib: Sequence[tuple[Any, ...]]) -> Callable[..., Any]:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    gm = torch.export.export(copy.deepcopy(model).eval(), calib[0], strict=False).module()
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)
    )
    gm = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for xs in calib:
            gm(*xs)
    return convert_pt2e(gm)


def measure(
    flow: Callable[..., Any],
    model: torch.nn.Module,
    calib: Sequence[tuple[Any, ...]],
    held_out: Sequence[tuple[Any, ...]],
) -> tuple[float, float]:
    """(SQNR dB over the held-out outputs, seconds the flow took)."""
    start = time.perf_counter()
    quantized = flow(model, calib)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        got = torch.cat([quantized(*xs).flatten() for xs in held_out])
        ref = torch.cat([model(*xs).flatten() for xs in held_out])
    return sqnr_db(got, ref), seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", type=int, default=8, help="held-out setting: calibration batches")
    p.add_argument("--eval", type=int, default=8, help="held-out setting: evaluation batches")
    p.add_argument("--cases", nargs="*", default=list(ARCHITECTURES))
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")  # torchao / executorch import-time noise; not judged here
    torch.set_num_threads(1)
    rows = []
    for case in (c for c in CASES if c.name in args.cases):
        model = seeded_float_model(case, ARCHITECTURES[case.name]).eval()
        gen = torch.Generator().manual_seed(case.seed + 1)
        stored = (case.make_input(case.input_shapes[0], gen),)  # the golden's stored input
        gen = torch.Generator().manual_seed(1234)
        calib = [(case.make_input(case.input_shapes[0], gen),) for _ in range(args.calib)]
        held_out = [(case.make_input(case.input_shapes[0], gen),) for _ in range(args.eval)]
        for setting, c, e in (("golden", [stored], [stored]), ("held-out", calib, held_out)):
            ours, t_ours = measure(qbc_flow, model, c, e)
            theirs, t_theirs = measure(torchao_flow, model, c, e)
            rows.append((case.name, setting, ours, theirs, t_ours / t_theirs))
    print(f"{'case':32} {'setting':9} {'qbc dB':>8} {'torchao dB':>10} {'qbc-ao':>7} "
          f"{'time qbc/ao':>11}  target qbc-ao >= {TARGET_DB:g} dB")  # fmt: skip
    missed = 0
    for name, setting, ours, theirs, ratio in rows:
        ok = ours - theirs >= TARGET_DB
        missed += not ok
        print(
            f"{name:32} {setting:9} {ours:8.2f} {theirs:10.2f} {ours - theirs:7.2f} "
            f"{ratio:11.2f}  {'ok' if ok else 'MISSED'}"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
