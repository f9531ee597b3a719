"""QConfigs: which observer / fake-quant constructors quantize a module's activation and weight.

``QConfig(activation, weight)`` holds *constructors* (classes or ``Cls.with_args(...)``), not
instances: every module gets its own observers. The default observers and configs mirror
torch.ao's (same names, same settings) so a torch.ao eager recipe maps onto qbc one to one.

Per engine (``get_default_qconfig`` / ``get_default_qat_qconfig``):

========== ============================== ======================================= =============
engine     activation                     weight                                  why
========== ============================== ======================================= =============
fbgemm     uint8 affine, reduce_range     int8 per-channel symmetric              16-bit accum.
x86        uint8 affine, reduce_range     int8 per-channel symmetric              as fbgemm
qnnpack    uint8 affine, full range       int8 per-tensor symmetric               as torch.ao
onednn     uint8 affine, full range       int8 per-channel symmetric              VNNI, int32
reference  uint8 affine, full range       int8 per-channel symmetric              see below
int_mm     uint8 affine, full range       int8 per-channel symmetric              see below
========== ============================== ======================================= =============

``reference`` computes in exact integer arithmetic (int32/int64 accumulators), so nothing can
overflow and dropping a bit of activation precision (``reduce_range``) would only lose accuracy.
``int_mm`` must be bit-identical to ``reference`` and feeds ``torch._int_mm`` (int8 x int8 ->
int32): symmetric weights (zero point 0) make the weight side a plain int8 matrix, and uint8
activations become int8 by subtracting 128, a shift folded into the zero-point correction; so it
takes the same config as ``reference``. Both use per-channel weights because that is the most
accurate choice every engine we compare against (fbgemm, x86, onednn) also makes.
PTQ activations use :class:`HistogramObserver`; QAT uses the fused moving-average fake-quant
(``version=1``, the torch.ao default) or plain :class:`FakeQuantize` (``version=0``).
"""

from collections import namedtuple
from typing import Any

import torch
from torch import nn

from harness.quant.fake_quantize import (
    FakeQuantize,
    FixedQParamsFakeQuantize,
    FusedMovingAvgObsFakeQuantize,
)
from harness.quant.observers import (
    FixedQParamsObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    NoopObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
    RecordingObserver,
)

ENGINES = ("reference", "int_mm", "fbgemm", "x86", "qnnpack", "onednn")


class QConfig(namedtuple("QConfig", ["activation", "weight"])):
    """Constructors for a module's activation and weight observers (or fake-quants).

    Passing an observer *instance* raises ``ValueError``: modules would then share one
    observer and silently mix their statistics.
    """

    __slots__ = ()

    def __new__(cls, activation: Any, weight: Any) -> "QConfig":
        for name, ctor in (("activation", activation), ("weight", weight)):
            if isinstance(ctor, nn.Module):
                raise ValueError(
                    f"{name}: QConfig takes an observer constructor (a class or "
                    f"Cls.with_args(...)), not an instance"
                )
            if not callable(ctor):
                raise ValueError(f"{name}: not callable: {ctor!r}")
        return super().__new__(cls, activation, weight)


# ---- observers (torch.ao names and settings) ------------------------------------------------

default_observer = MinMaxObserver.with_args(quant_min=0, quant_max=127)
default_placeholder_observer = PlaceholderObserver
default_debug_observer = RecordingObserver
default_weight_observer = MinMaxObserver.with_args(
    dtype=torch.qint8, qscheme=torch.per_tensor_symmetric
)
weight_observer_range_neg_127_to_127 = MinMaxObserver.with_args(
    dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-127, quant_max=127, eps=2**-12
)
default_histogram_observer = HistogramObserver.with_args(quant_min=0, quant_max=127)
default_per_channel_weight_observer = PerChannelMinMaxObserver.with_args(
    dtype=torch.qint8, qscheme=torch.per_channel_symmetric
)
per_channel_weight_observer_range_neg_127_to_127 = PerChannelMinMaxObserver.with_args(
    dtype=torch.qint8,
    qscheme=torch.per_channel_symmetric,
    quant_min=-127,
    quant_max=127,
    eps=2**-12,
)
default_dynamic_quant_observer = PlaceholderObserver.with_args(
    dtype=torch.quint8, quant_min=0, quant_max=255, is_dynamic=True
)
# Embedding weights: one (scale, float zero point) per row, 8-bit or 4-bit codes.
default_float_qparams_observer = PerChannelMinMaxObserver.with_args(
    dtype=torch.quint8, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0
)
default_float_qparams_observer_4bit = PerChannelMinMaxObserver.with_args(
    dtype=torch.quint4x2, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0
)
# Outputs of ops with a known range: [-1, 1] (tanh) and [0, 1] (sigmoid, softmax).
default_fixed_qparams_range_neg1to1_observer = FixedQParamsObserver.with_args(
    scale=2.0 / 256.0, zero_point=128, dtype=torch.quint8, quant_min=0, quant_max=255
)
default_fixed_qparams_range_0to1_observer = FixedQParamsObserver.with_args(
    scale=1.0 / 256.0, zero_point=0, dtype=torch.quint8, quant_min=0, quant_max=255
)

# ---- fake-quants ------------------------------------------------------------------------------

default_fake_quant = FakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=0,
    quant_max=255,
    dtype=torch.quint8,
    qscheme=torch.per_tensor_affine,
    reduce_range=True,
)
default_weight_fake_quant = FakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=-128,
    quant_max=127,
    dtype=torch.qint8,
    qscheme=torch.per_tensor_symmetric,
    reduce_range=False,
)
default_dynamic_fake_quant = FakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=0,
    quant_max=255,
    is_dynamic=True,
    dtype=torch.quint8,
    averaging_constant=1,
)
default_per_channel_weight_fake_quant = FakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver,
    quant_min=-128,
    quant_max=127,
    dtype=torch.qint8,
    qscheme=torch.per_channel_symmetric,
    reduce_range=False,
    ch_axis=0,
)
# averaging_constant=1: embedding weights are observed afresh at every step (no memory).
default_embedding_fake_quant = FakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver,
    qscheme=torch.per_channel_affine_float_qparams,
    dtype=torch.quint8,
    quant_min=0,
    quant_max=255,
    ch_axis=0,
    averaging_constant=1,
)
default_embedding_fake_quant_4bit = FakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver,
    qscheme=torch.per_channel_affine_float_qparams,
    ch_axis=0,
    dtype=torch.quint4x2,
    averaging_constant=1,
)
default_histogram_fake_quant = FakeQuantize.with_args(
    observer=HistogramObserver,
    quant_min=0,
    quant_max=255,
    dtype=torch.quint8,
    qscheme=torch.per_tensor_affine,
    reduce_range=True,
)
default_fused_act_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8
)
default_fused_wt_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=-128,
    quant_max=127,
    dtype=torch.qint8,
    qscheme=torch.per_tensor_symmetric,
)
default_fused_per_channel_wt_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver,
    quant_min=-128,
    quant_max=127,
    dtype=torch.qint8,
    qscheme=torch.per_channel_symmetric,
)
default_fixed_qparams_range_neg1to1_fake_quant = FixedQParamsFakeQuantize.with_args(
    observer=default_fixed_qparams_range_neg1to1_observer
)
default_fixed_qparams_range_0to1_fake_quant = FixedQParamsFakeQuantize.with_args(
    observer=default_fixed_qparams_range_0to1_observer
)

# ---- qconfigs -----------------------------------------------------------------------------------

default_qconfig = QConfig(activation=default_observer, weight=default_weight_observer)
default_debug_qconfig = QConfig(activation=default_debug_observer, weight=default_weight_observer)
default_per_channel_qconfig = QConfig(
    activation=default_observer, weight=default_per_channel_weight_observer
)
default_dynamic_qconfig = QConfig(
    activation=default_dynamic_quant_observer, weight=default_weight_observer
)
per_channel_dynamic_qconfig = QConfig(
    activation=default_dynamic_quant_observer, weight=default_per_channel_weight_observer
)
float16_dynamic_qconfig = QConfig(
    activation=PlaceholderObserver.with_args(dtype=torch.float16, is_dynamic=True),
    weight=PlaceholderObserver.with_args(dtype=torch.float16),
)
float16_static_qconfig = QConfig(
    activation=PlaceholderObserver.with_args(dtype=torch.float16),
    weight=PlaceholderObserver.with_args(dtype=torch.float16),
)
float_qparams_weight_only_qconfig = QConfig(
    activation=default_placeholder_observer, weight=default_float_qparams_observer
)
float_qparams_weight_only_qconfig_4bit = QConfig(
    activation=default_placeholder_observer, weight=default_float_qparams_observer_4bit
)
default_qat_qconfig = QConfig(activation=default_fake_quant, weight=default_weight_fake_quant)
default_qat_qconfig_v2 = QConfig(
    activation=default_fused_act_fake_quant, weight=default_fused_wt_fake_quant
)
default_dynamic_qat_qconfig = QConfig(
    activation=default_dynamic_fake_quant, weight=default_weight_fake_quant
)
default_weight_only_qconfig = QConfig(activation=nn.Identity, weight=default_weight_fake_quant)
default_activation_only_qconfig = QConfig(activation=default_fake_quant, weight=nn.Identity)
# Embeddings stay float at the output (NoopObserver float32); only the table is quantized.
default_embedding_qat_qconfig = QConfig(
    activation=NoopObserver.with_args(dtype=torch.float32), weight=default_embedding_fake_quant
)
default_embedding_qat_qconfig_4bit = QConfig(
    activation=NoopObserver.with_args(dtype=torch.float32),
    weight=default_embedding_fake_quant_4bit,
)
# Signed activations and weights restricted to [-127, 127] (xnnpack via qnnpack).
default_symmetric_qnnpack_qconfig = QConfig(
    activation=HistogramObserver.with_args(dtype=torch.qint8, reduce_range=False, eps=2**-12),
    weight=weight_observer_range_neg_127_to_127,
)
default_per_channel_symmetric_qnnpack_qconfig = QConfig(
    activation=HistogramObserver.with_args(dtype=torch.qint8, reduce_range=False, eps=2**-12),
    weight=per_channel_weight_observer_range_neg_127_to_127,
)


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine: {engine!r} is not one of {list(ENGINES)}")


def _activation_reduce_range(engine: str) -> bool:
    # fbgemm/x86 accumulate uint8 x int8 products pairwise in int16 (vpmaddubsw): one bit of
    # activation range is given up so that the pairs cannot saturate.
    return engine in ("fbgemm", "x86")


def get_default_qconfig(engine: str = "x86", version: int = 0) -> QConfig:
    """Post-training static quantization config for ``engine`` (table in the module docstring).

    ``version`` is accepted for torch.ao compatibility; only 0 exists.
    """
    _check_engine(engine)
    if version != 0:
        raise ValueError(f"version: get_default_qconfig has only version 0, got {version}")
    activation = HistogramObserver.with_args(reduce_range=_activation_reduce_range(engine))
    weight = default_weight_observer if engine == "qnnpack" else default_per_channel_weight_observer
    return QConfig(activation=activation, weight=weight)


def get_default_qat_qconfig(engine: str = "x86", version: int = 1) -> QConfig:
    """Quantization-aware training config for ``engine``.

    ``version=1`` (default): :class:`FusedMovingAvgObsFakeQuantize` for activation and weight;
    ``version=0``: :class:`FakeQuantize`. Activations are uint8 over ``[0, 255]``, halved to
    ``[0, 127]`` for fbgemm/x86; weights int8 symmetric, per tensor for qnnpack and per channel
    everywhere else.
    """
    _check_engine(engine)
    reduce_range = _activation_reduce_range(engine)
    per_channel = engine != "qnnpack"
    if version == 1:
        activation = FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver,
            quant_min=0,
            quant_max=255,
            reduce_range=reduce_range,
        )
        weight = (
            default_fused_per_channel_wt_fake_quant if per_channel else default_fused_wt_fake_quant
        )
    elif version == 0:
        activation = FakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver,
            quant_min=0,
            quant_max=255,
            reduce_range=reduce_range,
        )
        weight = default_per_channel_weight_fake_quant if per_channel else default_weight_fake_quant
    else:
        raise ValueError(f"version: get_default_qat_qconfig takes 0 or 1, got {version}")
    return QConfig(activation=activation, weight=weight)


def get_default_dynamic_qconfig(engine: str = "x86", dtype: torch.dtype = torch.qint8) -> QConfig:
    """Dynamic quantization config: int8 weights (per channel except on qnnpack) with
    activation qparams computed at run time, or float16 weights (``dtype=torch.float16``)."""
    _check_engine(engine)
    if dtype == torch.float16:
        return float16_dynamic_qconfig
    if dtype not in (torch.qint8, torch.int8):
        raise ValueError(f"dtype: dynamic quantization takes qint8 or float16, got {dtype}")
    return default_dynamic_qconfig if engine == "qnnpack" else per_channel_dynamic_qconfig


def get_embedding_qconfig(bits: int = 8, qat: bool = False) -> QConfig:
    """Weight-only embedding config with float qparams per row, 8-bit or 4-bit codes."""
    if bits not in (4, 8):
        raise ValueError(f"bits: embeddings are quantized to 8 or 4 bits, got {bits}")
    if qat:
        return default_embedding_qat_qconfig if bits == 8 else default_embedding_qat_qconfig_4bit
    return (
        float_qparams_weight_only_qconfig if bits == 8 else float_qparams_weight_only_qconfig_4bit
    )
