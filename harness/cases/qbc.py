"""Case table of the ``qbc`` subject (``harness.quant``): every quantized module, observer and
fake-quant, per engine.

Static modules take and return ``(codes, scale, zero_point)`` of plain tensors; inputs are
U[0, 1) quantized to uint8 with scale 1/128 and zero point 0 (7 fractional bits). Builders follow
the torch.ao-shaped eager flow of harness.quant: seeded float module -> the engine's default
qconfig -> calibrate the output observer on the dequantized input (one pass) -> ``from_float``.

Native engines (fbgemm, x86, qnnpack, onednn) run eagerly only, so their goldens have no
TorchScript formats; ``reference`` and ``int_mm`` have every format. Observers and fake-quants
are engine-independent: one golden, on ``reference``.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from harness.cases import BuildContext, Built, Case
from harness.graphsig import signature

INPUT_SCALE = 1.0 / 128
SCRIPTABLE = ("reference", "int_mm")
NATIVE = ("fbgemm", "x86", "qnnpack", "onednn")
ALL_FORMATS = (
    "input",
    "state_dict",
    "state_dict_legacy",
    "safetensors",
    "scripted",
    "traced",
    "expected",
    "graph",
)
EAGER_FORMATS = ("input", "state_dict", "state_dict_legacy", "safetensors", "expected")
EAGER_ONLY_ON_NATIVE = dict.fromkeys(NATIVE, EAGER_FORMATS)
STATE_FORMATS = ("input", "state_dict", "state_dict_legacy", "safetensors", "expected")


def quantized_input(shapes: tuple[tuple[int, ...], ...], gen: torch.Generator) -> tuple[Any, ...]:
    """(codes uint8, scale float32 [1], zero_point int64 [1]) of x ~ U[0, 1) at scale 1/128."""
    x = torch.rand(*shapes[0], generator=gen)
    codes = torch.clamp(torch.round(x / INPUT_SCALE), 0, 255).to(torch.uint8)
    return codes, torch.tensor([INPUT_SCALE]), torch.tensor([0], dtype=torch.int64)


def _dequantized(xs: tuple[Any, ...]) -> torch.Tensor:
    codes, scale, zero_point = xs
    return (codes.to(torch.float32) - zero_point.to(torch.float32)) * scale


def _seeded(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return factory()


def _trace(module: nn.Module, xs: tuple[Any, ...]) -> Any:
    with warnings.catch_warnings():
        # Tracing turns shape checks into constants; the trace only ever sees this shape.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return torch.jit.trace(module, xs, check_trace=False)


def _built(
    qm: nn.Module, xs: tuple[Any, ...], fresh: Callable[[], nn.Module], engine: str
) -> Built:
    built = Built(model=qm, inputs=xs, expected=qm(*xs), fresh=fresh)
    if engine in SCRIPTABLE:
        # Each compiled at most once per golden (TorchScript's class-mangling counters make a
        # second compilation change the bytes of later goldens), and only when asked for: the
        # runner needs the scripted module for graph signatures only, never the traced one.
        built.scripted = functools.cache(lambda: torch.jit.script(qm))
        built.traced = functools.cache(lambda: _trace(qm, xs))
        built.signature = lambda: signature(built.get("scripted"))
    return built


def static_module(
    float_factory: Callable[[], nn.Module], qcls_name: str, fresh: Callable[[], nn.Module]
) -> Callable[[BuildContext], Built]:
    """Builder for static modules (see module docstring)."""

    def build(ctx: BuildContext) -> Built:
        from harness.quant import nn as qnn
        from harness.quant import qconfig as qc

        fm = _seeded(ctx.case.seed, float_factory).eval()
        xs = ctx.make_inputs()
        qconfig = qc.get_default_qconfig(ctx.engine)
        for sub in fm.modules():
            sub.qconfig = qconfig
        fm.activation_post_process = qconfig.activation()
        fm.activation_post_process(fm(_dequantized(xs)))
        qm = getattr(qnn, qcls_name).from_float(fm)
        return _built(qm, xs, fresh, ctx.engine)

    build.__qualname__ = f"static_module[{qcls_name}]"
    return build


def dynamic_module(
    float_factory: Callable[[], nn.Module],
    qcls: Callable[[], Any],
    qconfig_name: str,
    fresh: Callable[[], nn.Module],
) -> Callable[[BuildContext], Built]:
    """Builder for dynamic / weight-only modules: float module + qconfig -> ``from_float``."""

    def build(ctx: BuildContext) -> Built:
        from harness.quant import qconfig as qc

        fm = _seeded(ctx.case.seed, float_factory).eval()
        fm.qconfig = getattr(qc, qconfig_name)
        qm = qcls().from_float(fm)
        return _built(qm, ctx.make_inputs(), fresh, ctx.engine)

    build.__qualname__ = f"dynamic_module[{qconfig_name}]"
    return build


def _observer_run(obs: Any, xs: tuple[Any, ...]) -> dict[str, Any]:
    out = obs(xs[0])
    scale, zero_point = obs.calculate_qparams()
    return {"output": out, "scale": scale, "zero_point": zero_point}


def stateful(make: Callable[[], nn.Module], name: str) -> Callable[[BuildContext], Built]:
    """Builder for observers and fake-quants: one pass over the input, then (output, qparams).

    A second pass on the same input is a fixed point (min/max and moving averages already equal
    the input's), so a reloaded state reproduces the stored outputs."""

    def build(ctx: BuildContext) -> Built:
        module = make()
        xs = ctx.make_inputs()
        _observer_run(module, xs)
        return Built(
            model=module,
            inputs=xs,
            expected=_observer_run(module, xs),
            run=_observer_run,
            fresh=make,
        )

    build.__qualname__ = f"stateful[{name}]"
    return build


def _indices(shapes: tuple[tuple[int, ...], ...], gen: torch.Generator) -> tuple[Any, ...]:
    return (torch.randint(0, 10, shapes[0], generator=gen),)


def _bag_inputs(shapes: tuple[tuple[int, ...], ...], gen: torch.Generator) -> tuple[Any, ...]:
    # 8 indices in 3 bags: [0, 3), [3, 5), [5, 8)
    return torch.randint(0, 10, shapes[0], generator=gen), torch.tensor([0, 3, 5])


def _cases() -> list[Case]:
    if importlib.util.find_spec("harness.quant.nn") is None:
        return []
    from harness.quant import fake_quantize as fq
    from harness.quant import nn as qnn
    from harness.quant import observers as ob

    def conv(
        dims: int, cin: int = 3, cout: int = 3, bias: bool = True, groups: int = 1
    ) -> Callable[[], nn.Module]:
        cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        return lambda: cls(cin, cout, 3, bias=bias, groups=groups)

    def conv_relu(dims: int) -> Callable[[], nn.Module]:
        return lambda: nn.Sequential(conv(dims)(), nn.ReLU())

    def static(
        name: str,
        factory: Callable[[], nn.Module],
        qcls: str,
        fresh: Callable[[], nn.Module],
        shape: tuple[int, ...],
        **kw: Any,
    ) -> Case:
        return Case(
            "qbc",
            name,
            static_module(factory, qcls, fresh),
            (shape,),
            ALL_FORMATS,
            make_inputs=quantized_input,
            formats_by_engine=EAGER_ONLY_ON_NATIVE,
            **kw,
        )

    def dynamic(name: str, builder: Any, shape: tuple[int, ...], **kw: Any) -> Case:
        return Case(
            "qbc",
            name,
            builder,
            (shape,),
            ALL_FORMATS,
            formats_by_engine=EAGER_ONLY_ON_NATIVE,
            **kw,
        )

    def state(name: str, make: Callable[[], nn.Module], shape: tuple[int, ...] = (5, 5)) -> Case:
        return Case(
            "qbc",
            name,
            stateful(make, name),
            (shape,),
            STATE_FORMATS,
            engines=("reference",),
            description="engine-independent: one golden",
        )

    lin = lambda: nn.Linear(3, 2)  # noqa: E731
    return [
        static("linear", lin, "Linear", lambda: qnn.Linear(3, 2), (2, 3)),
        static(
            "linear_relu",
            lambda: nn.Sequential(nn.Linear(3, 2), nn.ReLU()),
            "LinearReLU",
            lambda: qnn.LinearReLU(3, 2),
            (2, 3),
        ),
        static("conv1d", conv(1), "Conv1d", lambda: qnn.Conv1d(3, 3, 3), (1, 3, 8)),
        static("conv2d", conv(2), "Conv2d", lambda: qnn.Conv2d(3, 3, 3), (1, 3, 6, 6)),
        static(
            "conv2d_nobias",
            conv(2, bias=False),
            "Conv2d",
            lambda: qnn.Conv2d(3, 3, 3, bias=False),
            (1, 3, 6, 6),
        ),
        static(
            "conv2d_grouped",
            conv(2, cin=4, cout=4, groups=2),
            "Conv2d",
            lambda: qnn.Conv2d(4, 4, 3, groups=2),
            (1, 4, 6, 6),
        ),
        static(
            "conv2d_relu", conv_relu(2), "ConvReLU2d", lambda: qnn.ConvReLU2d(3, 3, 3), (1, 3, 6, 6)
        ),
        static("conv3d", conv(3), "Conv3d", lambda: qnn.Conv3d(3, 3, 3), (1, 3, 5, 5, 5)),
        static(
            "conv3d_relu",
            conv_relu(3),
            "ConvReLU3d",
            lambda: qnn.ConvReLU3d(3, 3, 3),
            (1, 3, 5, 5, 5),
        ),
        dynamic(
            "linear_dynamic_qint8",
            dynamic_module(
                lin,
                lambda: qnn.DynamicLinear,
                "default_dynamic_qconfig",
                lambda: qnn.DynamicLinear(3, 2),
            ),
            (2, 3),
        ),
        dynamic(
            "linear_dynamic_float16",
            dynamic_module(
                lin,
                lambda: qnn.DynamicLinear,
                "float16_dynamic_qconfig",
                lambda: qnn.DynamicLinear(3, 2, True, torch.float16),
            ),
            (2, 3),
            engines=("reference", "int_mm", "fbgemm", "x86"),
            description="qnnpack and onednn have no fp16 weight packing",
        ),
        dynamic(
            "lstm_dynamic",
            dynamic_module(
                lambda: nn.LSTM(3, 7, 1),
                lambda: qnn.LSTM,
                "default_dynamic_qconfig",
                lambda: qnn.LSTM(3, 7, 1),
            ),
            (4, 4, 3),
        ),
        Case(
            "qbc",
            "embedding",
            dynamic_module(
                lambda: nn.Embedding(10, 4),
                lambda: qnn.Embedding,
                "float_qparams_weight_only_qconfig",
                lambda: qnn.Embedding(10, 4),
            ),
            ((6,),),
            ALL_FORMATS,
            make_inputs=_indices,
            formats_by_engine=EAGER_ONLY_ON_NATIVE,
        ),
        Case(
            "qbc",
            "embedding_bag",
            dynamic_module(
                lambda: nn.EmbeddingBag(10, 4, mode="sum"),
                lambda: qnn.EmbeddingBag,
                "float_qparams_weight_only_qconfig",
                lambda: qnn.EmbeddingBag(10, 4, mode="sum"),
            ),
            ((8,),),
            ALL_FORMATS,
            make_inputs=_bag_inputs,
            formats_by_engine=EAGER_ONLY_ON_NATIVE,
        ),
        state("observer_minmax", ob.MinMaxObserver),
        state("observer_moving_average_minmax", ob.MovingAverageMinMaxObserver),
        state("observer_per_channel_minmax", ob.PerChannelMinMaxObserver),
        state(
            "observer_moving_average_per_channel_minmax", ob.MovingAveragePerChannelMinMaxObserver
        ),
        state("observer_histogram", ob.HistogramObserver),
        state(
            "fake_quant_default",
            lambda: fq.FakeQuantize(
                observer=ob.MovingAverageMinMaxObserver, quant_min=0, quant_max=255
            ),
        ),
        state(
            "fake_quant_fused_moving_avg",
            lambda: fq.FusedMovingAvgObsFakeQuantize(
                observer=ob.MovingAverageMinMaxObserver, quant_min=0, quant_max=255
            ),
        ),
        state(
            "fake_quant_per_channel",
            lambda: fq.FakeQuantize(
                observer=ob.MovingAveragePerChannelMinMaxObserver,
                quant_min=-128,
                quant_max=127,
                dtype=torch.qint8,
                qscheme=torch.per_channel_symmetric,
            ),
        ),
    ]


# Export-based (pt2e) cases: their own table, harness/cases/qbc_pt2e.py.
from harness.cases.qbc_pt2e import CASES as PT2E_CASES  # noqa: E402

CASES: list[Case] = _cases() + PT2E_CASES
