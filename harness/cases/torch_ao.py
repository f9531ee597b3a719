"""Case table of the ``torch_ao`` subject: every scenario of PyTorch's quantization BC test.

All builders run inside ``TorchAOSubject.use_engine`` (engine selected, torch deprecations
expected). Float weights come from ``torch.manual_seed(case.seed)`` in a forked RNG, never from
the uninitialized memory torch.ao's quantized constructors allocate, so every build is
bit-for-bit repeatable. Static modules are produced by torch.ao's own eager flow (observer ->
``from_float``) with the engine's default qconfig, so per-engine goldens differ exactly where the
engines' qconfigs and kernels differ.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from harness import compat
from harness.cases import BuildContext, Built, Case
from harness.cases.torch_ao_models import LinearReluFunctional, LinearReLUNet, LSTMHolder
from harness.graphsig import signature

# These builders script torch.ao modules: make torch.jit's builtin table safe to script with
# first (harness.compat.keep_jit_builtins_stable; torch.ao registers overloads as it imports).
compat.keep_jit_builtins_stable()

# Quantized inputs of static modules: x ~ U[0, 1) quantized with scale 1/128, zero point 0, so
# every input value is representable on quint8's [0, 255] with 7 fractional bits.
INPUT_SCALE = 1.0 / 128
INPUT_ZERO_POINT = 0

# qnnpack runs quantized conv3d but cannot unpack its weights (no state_dict).
NO_QNNPACK_3D = ("fbgemm", "x86", "onednn")
MODULE_FORMATS = (
    "input",
    "state_dict",
    "state_dict_legacy",
    "scripted",
    "traced",
    "expected",
    "graph",
)
GRAPH_FORMATS = ("input", "scripted", "traced", "expected", "graph")
OBSERVER_FORMATS = ("input", "state_dict", "state_dict_legacy", "safetensors", "expected")


def quantized_rand(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """U[0, 1) input quantized to quint8 with (INPUT_SCALE, INPUT_ZERO_POINT)."""
    x = torch.rand(*shape, generator=gen)
    return torch.quantize_per_tensor(x, INPUT_SCALE, INPUT_ZERO_POINT, torch.quint8)


def normal(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def default_qconfig(engine: str, qat: bool = False) -> Any:
    """torch.ao's default (QAT) qconfig for ``engine``.

    torch warns that onednn's default qconfig (reduce_range=False) may lose accuracy on CPUs
    without VNNI; that is a statement about this machine, expected here, so only that message is
    silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Default qconfig of oneDNN backend", category=UserWarning
        )
        if qat:
            return torch.ao.quantization.get_default_qat_qconfig(engine)
        return torch.ao.quantization.get_default_qconfig(engine)


# Warnings torch.ao raises from inside its own graph-mode passes (not about our usage).
_INTERNAL_WARNINGS = (r"The \.grad attribute of a Tensor that is not a leaf Tensor",)


@contextlib.contextmanager
def torch_internal_warnings_expected() -> Iterator[None]:
    """Silence only the listed messages torch.ao emits from its own passes."""
    with warnings.catch_warnings():
        for pattern in _INTERNAL_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern, category=UserWarning)
        yield


def _seeded(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return factory()


def _script(model: nn.Module) -> Any:
    return torch.jit.script(model)


def _trace(model: nn.Module, inputs: tuple[Any, ...]) -> Any:
    """``torch.jit.trace`` without torch's re-run check (the golden's own load check compares
    the traced module's output with the expected one anyway).

    Tracing torch.ao's dynamic LSTM converts shape checks to Python bools; torch reports that as
    a TracerWarning. The trace is only ever run on the same input shape, so it is expected here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return torch.jit.trace(model, inputs, check_trace=False)


def _eager_built(qm: nn.Module, xs: tuple[Any, ...], fresh: Callable[[], nn.Module]) -> Built:
    """Built of an eager quantized module; TorchScript copies and signature made on demand."""
    built = Built(model=qm, inputs=xs, expected=qm(*xs), fresh=fresh)
    # Each compiled at most once per golden (TorchScript archives embed per-process class-mangling
    # counters, so compiling twice would change the bytes of later goldens), and only on demand.
    built.scripted = functools.cache(lambda: _script(qm))
    built.traced = functools.cache(lambda: _trace(qm, xs))
    built.signature = lambda: signature(built.get("scripted"))
    return built


def static_module(
    float_factory: Callable[[], nn.Module],
    qcls: Callable[[], Any],
    fresh: Callable[[], nn.Module],
) -> Callable[[BuildContext], Built]:
    """Builder: seeded float module -> engine's default qconfig -> calibrate output observer on
    the dequantized stored input (one pass) -> ``qcls.from_float``."""

    def build(ctx: BuildContext) -> Built:
        fm = _seeded(ctx.case.seed, float_factory).eval()
        xs = ctx.make_inputs()
        qconfig = default_qconfig(ctx.engine)
        for sub in fm.modules():  # fused modules read the qconfig of their inner Linear/Conv
            sub.qconfig = qconfig
        fm.activation_post_process = qconfig.activation()
        fm.activation_post_process(fm(xs[0].dequantize()))
        qm = qcls.from_float(fm)
        return _eager_built(qm, xs, fresh)

    build.__qualname__ = f"static_module[{qcls.__name__}]"
    return build


def dynamic_module(
    float_factory: Callable[[], nn.Module],
    qcls: Any,
    qconfig: Callable[[], Any],
    fresh: Callable[[], nn.Module],
    wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
) -> Callable[[BuildContext], Built]:
    """Builder: seeded float module with a dynamic qconfig -> ``qcls.from_float`` (weights
    quantized once; activations quantized per call from their own range)."""

    def build(ctx: BuildContext) -> Built:
        fm = _seeded(ctx.case.seed, float_factory).eval()
        for sub in fm.modules():
            sub.qconfig = qconfig()
        qm = wrap(qcls.from_float(fm))
        xs = ctx.make_inputs()
        return _eager_built(qm, xs, fresh)

    build.__qualname__ = f"dynamic_module[{qcls.__name__}]"
    return build


def graph_mode_conv2d(bias: bool) -> Callable[[BuildContext], Built]:
    """Builder: QuantStub + float Conv2d, scripted and traced, then ``quantize_jit`` with
    ``default_qconfig`` calibrated on the stored input (the graph-mode quantization flow)."""

    def build(ctx: BuildContext) -> Built:
        def factory() -> nn.Module:
            return nn.Sequential(torch.ao.quantization.QuantStub(), nn.Conv2d(3, 3, 3, bias=bias))

        fm = _seeded(ctx.case.seed, factory).eval()
        xs = ctx.make_inputs()
        qconfig = {"": torch.ao.quantization.default_qconfig}

        def calibrate(model: Any, x: torch.Tensor) -> None:
            model(x)

        with torch_internal_warnings_expected():
            scripted = torch.ao.quantization.quantize_jit(
                torch.jit.script(fm), qconfig, calibrate, [xs[0]]
            )
            traced = torch.ao.quantization.quantize_jit(
                torch.jit.trace(fm, xs, check_trace=False), qconfig, calibrate, [xs[0]]
            )
        return Built(
            model=scripted,
            inputs=xs,
            expected=scripted(*xs),
            scripted=scripted,
            traced=traced,
            signature=signature(scripted),
        )

    build.__qualname__ = f"graph_mode_conv2d[bias={bias}]"
    return build


def _observer_run(obs: Any, xs: tuple[Any, ...]) -> dict[str, Any]:
    out = obs(xs[0])
    scale, zero_point = obs.calculate_qparams()
    return {"output": out, "scale": scale, "zero_point": zero_point}


def observer(cls: Callable[[], nn.Module]) -> Callable[[BuildContext], Built]:
    """Builder: a fresh observer sees the stored input once; expected = (output, qparams)."""

    def build(ctx: BuildContext) -> Built:
        obs = cls()
        xs = ctx.make_inputs()
        return Built(
            model=obs, inputs=xs, expected=_observer_run(obs, xs), run=_observer_run, fresh=cls
        )

    build.__qualname__ = f"observer[{cls.__name__}]"
    return build


def _qat_skeleton(seed: int, engine: str) -> nn.Module:
    def factory() -> nn.Module:
        model = LinearReLUNet(5)
        model.linear.weight = nn.Parameter(torch.randn(5, 5))
        return model

    model = _seeded(seed, factory)
    model.qconfig = default_qconfig(engine, qat=True)
    return torch.ao.quantization.prepare_qat(torch.ao.quantization.QuantWrapper(model).train())


def default_qat(ctx: BuildContext) -> Built:
    """Builder: Linear+ReLU wrapped and prepared with the engine's default QAT qconfig; one
    training-mode pass calibrates the fake-quant observers. Re-running on the same input is a
    fixed point (moving-average min/max already equal the input's), so outputs are comparable."""
    model = _qat_skeleton(ctx.case.seed, ctx.engine)
    xs = ctx.make_inputs()
    model(*xs)
    return Built(
        model=model,
        inputs=xs,
        expected=model(*xs),
        fresh=lambda: _qat_skeleton(ctx.case.seed, ctx.engine),
    )


def fx_transform(engine: str) -> Callable[[nn.Module, tuple[Any, ...]], nn.Module]:
    """prepare_fx with the engine's default qconfig, one calibration pass, convert_fx."""
    from torch.ao.quantization import quantize_fx

    def transform(model: nn.Module, xs: tuple[Any, ...]) -> nn.Module:
        qconfig = default_qconfig(engine)
        mapping = torch.ao.quantization.QConfigMapping().set_global(qconfig)
        prepared = quantize_fx.prepare_fx(model.eval(), mapping, example_inputs=xs)
        prepared(*xs)
        return quantize_fx.convert_fx(prepared)

    return transform


def linear_relu_package(ctx: BuildContext) -> Built:
    """Builder: a functional Linear+ReLU float model, packaged with torch.package; the load check
    re-runs today's FX quantization transforms on the past package's model."""
    fm = _seeded(ctx.case.seed, lambda: LinearReluFunctional(4)).eval()
    xs = ctx.make_inputs()
    transform = fx_transform(ctx.engine)
    mq = transform(fm, xs)
    return Built(
        model=mq,
        inputs=xs,
        expected=mq(*xs),
        float_model=fm,
        package_interns=("harness.cases.torch_ao_models",),
        transform=transform,
        signature=signature(mq),
    )


def _nnq() -> tuple[Any, Any, Any, Any]:
    import torch.ao.nn.intrinsic as nni
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq
    import torch.ao.nn.quantized.dynamic as nnqd

    return nni, nniq, nnq, nnqd


def _cases() -> list[Case]:
    nni, nniq, nnq, nnqd = _nnq()
    qconfigs = torch.ao.quantization

    def conv(dims: int, bias: bool = True) -> Callable[[], nn.Module]:
        cls = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
        return lambda: cls(3, 3, kernel_size=3, bias=bias)

    def conv_relu(dims: int) -> Callable[[], nn.Module]:
        fused = {2: nni.ConvReLU2d, 3: nni.ConvReLU3d}[dims]
        return lambda: fused(conv(dims)(), nn.ReLU())

    def row(
        name: str, builder: Any, shape: tuple[int, ...], formats: tuple[str, ...], **kw: Any
    ) -> Case:
        return Case("torch_ao", name, builder, (shape,), formats, **kw)

    q_in = {"make_input": quantized_rand}
    return [
        row(
            "linear",
            static_module(lambda: nn.Linear(3, 1), nnq.Linear, lambda: nnq.Linear(3, 1)),
            (1, 3),
            MODULE_FORMATS,
            **q_in,
        ),
        row(
            "linear_relu",
            static_module(
                lambda: nni.LinearReLU(nn.Linear(3, 1), nn.ReLU()),
                nniq.LinearReLU,
                lambda: nniq.LinearReLU(3, 1),
            ),
            (1, 3),
            MODULE_FORMATS,
            **q_in,
        ),
        row(
            "linear_dynamic_qint8",
            dynamic_module(
                lambda: nn.Linear(3, 1),
                nnqd.Linear,
                lambda: qconfigs.default_dynamic_qconfig,
                lambda: nnqd.Linear(3, 1),
            ),
            (1, 3),
            MODULE_FORMATS,
        ),
        row(
            "linear_dynamic_float16",
            dynamic_module(
                lambda: nn.Linear(3, 1),
                nnqd.Linear,
                lambda: qconfigs.float16_dynamic_qconfig,
                lambda: nnqd.Linear(3, 1, dtype=torch.float16),
            ),
            (1, 3),
            MODULE_FORMATS,
            engines=("fbgemm", "x86"),
            description="fp16 weight packing exists only on fbgemm/x86",
        ),
        row(
            "conv2d",
            static_module(conv(2), nnq.Conv2d, lambda: nnq.Conv2d(3, 3, 3)),
            (1, 3, 6, 6),
            MODULE_FORMATS,
            **q_in,
        ),
        row(
            "conv2d_nobias",
            static_module(conv(2, bias=False), nnq.Conv2d, lambda: nnq.Conv2d(3, 3, 3, bias=False)),
            (1, 3, 6, 6),
            MODULE_FORMATS,
            **q_in,
        ),
        row(
            "conv2d_relu",
            static_module(conv_relu(2), nniq.ConvReLU2d, lambda: nniq.ConvReLU2d(3, 3, 3)),
            (1, 3, 6, 6),
            MODULE_FORMATS,
            **q_in,
        ),
        row(
            "conv3d",
            static_module(conv(3), nnq.Conv3d, lambda: nnq.Conv3d(3, 3, 3)),
            (1, 3, 6, 6, 6),
            MODULE_FORMATS,
            engines=NO_QNNPACK_3D,
            description="qnnpack cannot unpack conv3d weights, so it has no state_dict",
            **q_in,
        ),
        row(
            "conv3d_relu",
            static_module(conv_relu(3), nniq.ConvReLU3d, lambda: nniq.ConvReLU3d(3, 3, 3)),
            (1, 3, 6, 6, 6),
            MODULE_FORMATS,
            engines=NO_QNNPACK_3D,
            description="qnnpack cannot unpack conv3d weights, so it has no state_dict",
            **q_in,
        ),
        row(
            "lstm",
            dynamic_module(
                lambda: nn.LSTM(3, 7, 1),
                nnqd.LSTM,
                lambda: qconfigs.default_dynamic_qconfig,
                lambda: LSTMHolder(nnqd.LSTM(3, 7, 1)),
                wrap=LSTMHolder,
            ),
            (4, 4, 3),
            # No state_dict_legacy: torch.save(_use_new_zipfile_serialization=False) of this
            # state_dict writes uninitialized memory for the packed weights (bytes differ run to
            # run and loading does not restore the weights: ~200 steps off, SQNR ~0 dB).
            tuple(f for f in MODULE_FORMATS if f != "state_dict_legacy"),
            trusted_load=("state_dict",),
            description="dynamic LSTM; known to differ on AVX512-VNNI machines (pytorch#59098); "
            "its state_dict pickles ScriptObject packed params, so it cannot load weights_only",
        ),
        *[
            row(
                f"conv2d{nb}_graph{v}",
                graph_mode_conv2d(bias=not nb),
                (1, 3, 6, 6),
                GRAPH_FORMATS,
                description=(
                    "quantize_jit on scripted and traced QuantStub+Conv2d"
                    + (
                        f"; the {v[1:]} case keeps the conv packed-params {v[1:]} name of the "
                        "original suite (its version is whatever the producing torch serializes)"
                        if v
                        else ""
                    )
                ),
            )
            for v in ("", "_v2", "_v3")
            for nb in ("", "_nobias")
        ],
        row(
            "per_channel_observer",
            observer(qconfigs.PerChannelMinMaxObserver),
            (5, 5),
            OBSERVER_FORMATS,
            engines=("fbgemm",),
            description="observers are engine-independent: one golden",
        ),
        row(
            "per_tensor_observer",
            observer(qconfigs.MinMaxObserver),
            (5, 5),
            OBSERVER_FORMATS,
            engines=("fbgemm",),
            description="observers are engine-independent: one golden",
        ),
        row(
            "default_qat_qconfig",
            default_qat,
            (5, 5),
            OBSERVER_FORMATS,
            calibration="one training-mode pass on the stored input",
        ),
        row(
            "linear_relu_package",
            linear_relu_package,
            (1, 1, 4, 4),
            ("input", "package", "expected", "graph"),
            make_input=normal,
            description="torch.package of a float model + today's FX quantization",
        ),
    ]


CASES: list[Case] = _cases()
