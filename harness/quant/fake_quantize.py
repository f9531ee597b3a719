"""Fake quantization for quantization-aware training (QAT).

A fake-quant module observes its input (through an observer, see :mod:`observers`), derives
qparams from what it saw, and returns ``dequantize(quantize(x))`` in float so the network trains
against the rounding it will meet once quantized::

    y = (clamp(round(x * (1 / s)) + z, quant_min, quant_max) - z) * s

with a straight-through gradient: ``dy/dx = 1`` where ``x`` was not clamped, ``0`` elsewhere.
(For float zero points, i.e. ``per_channel_affine_float_qparams``, ``z`` is added before the
rounding.) The API is torch.ao-shaped: ``activation_post_process``, ``scale``, ``zero_point``,
``observer_enabled`` / ``fake_quant_enabled`` buffers and their ``enable_*`` / ``disable_*``
methods, ``with_args``. All modules are scriptable with ``torch.jit.script``, and all buffer
updates are in place.
"""

from typing import Any

import torch
from torch import nn

from harness.quant import primitives as P
from harness.quant.observers import (
    FixedQParamsObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    with_args,
)

__all__ = [
    "FakeQuantize",
    "FakeQuantizeBase",
    "FixedQParamsFakeQuantize",
    "FusedMovingAvgObsFakeQuantize",
    "disable_fake_quant",
    "disable_observer",
    "enable_fake_quant",
    "enable_observer",
]


class FakeQuantizeBase(nn.Module):
    """Holds the two switches: ``fake_quant_enabled`` and ``observer_enabled`` (``[1]`` buffers,
    1 = on), so they travel with the state_dict and can be flipped inside a scripted module."""

    fake_quant_enabled: torch.Tensor
    observer_enabled: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.uint8))
        self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.uint8))

    @torch.jit.export
    def enable_fake_quant(self, enabled: bool = True) -> None:
        self.fake_quant_enabled[0] = 1 if enabled else 0

    @torch.jit.export
    def disable_fake_quant(self) -> None:
        self.enable_fake_quant(False)

    @torch.jit.export
    def enable_observer(self, enabled: bool = True) -> None:
        self.observer_enabled[0] = 1 if enabled else 0

    @torch.jit.export
    def disable_observer(self) -> None:
        self.enable_observer(False)

    with_args = classmethod(with_args)


class FakeQuantize(FakeQuantizeBase):
    """Observer + fake-quant. ``observer`` is a constructor (a class or ``Cls.with_args(...)``)
    called with ``observer_kwargs``; ``quant_min``/``quant_max``, when given, override the
    observer's range (and must fit the observer's dtype).

    ``scale``/``zero_point`` buffers start at ``[1.0]``/``[0]`` (zero point float32 for float
    qparams, int32 otherwise) and take the observer's qparams (``[C]`` per channel) at every
    forward with the observer enabled.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(
        self,
        observer: Any = MovingAverageMinMaxObserver,
        quant_min: int | None = None,
        quant_max: int | None = None,
        is_dynamic: bool = False,
        **observer_kwargs: Any,
    ) -> None:
        super().__init__()
        if quant_min is not None and quant_max is not None:
            if quant_min > quant_max:
                raise ValueError(f"quant_min: {quant_min} is greater than quant_max {quant_max}")
            dtype = observer_kwargs.get("dtype")
            if dtype is None:
                bound = getattr(getattr(observer, "p", None), "keywords", {})
                dtype = bound.get("dtype", torch.uint8)
            lo, hi = P.dtype_bounds(dtype)
            if quant_min < lo:
                raise ValueError(f"quant_min: {quant_min} is below the {dtype} minimum {lo}")
            if quant_max > hi:
                raise ValueError(f"quant_max: {quant_max} is above the {dtype} maximum {hi}")
            observer_kwargs.update({"quant_min": quant_min, "quant_max": quant_max})
        elif (quant_min is None) != (quant_max is None):
            raise ValueError("quant_min/quant_max: give both bounds or neither")
        observer_kwargs["is_dynamic"] = is_dynamic
        self.activation_post_process = observer(**observer_kwargs)
        app = self.activation_post_process
        self.quant_min: int = app.quant_min
        self.quant_max: int = app.quant_max
        self.is_dynamic: bool = app.is_dynamic
        self.dtype = app.dtype
        self.qscheme = app.qscheme
        if self.qscheme not in P.PER_TENSOR_SCHEMES + P.PER_CHANNEL_SCHEMES:
            raise ValueError(f"qscheme: unsupported {self.qscheme}")
        self.is_per_channel: bool = self.qscheme in P.PER_CHANNEL_SCHEMES
        self.ch_axis: int = app.ch_axis if hasattr(app, "ch_axis") else -1
        float_qparams = self.qscheme == torch.per_channel_affine_float_qparams
        zp_dtype = torch.float32 if float_qparams else torch.int32
        self.register_buffer("scale", torch.tensor([1.0], dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor([0], dtype=zp_dtype))

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.activation_post_process.calculate_qparams()

    def _update_qparams(self) -> None:
        scale, zero_point = self.calculate_qparams()
        scale = scale.to(self.scale.device)
        zero_point = zero_point.to(self.zero_point.device)
        if self.scale.shape != scale.shape:
            self.scale.resize_(scale.shape)
            self.zero_point.resize_(zero_point.shape)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)

    def _fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_per_channel:
            return P.fake_quantize_kernel(
                x, self.scale, self.zero_point, self.quant_min, self.quant_max, self.ch_axis
            )
        return P.fake_quantize_kernel(
            x, self.scale, self.zero_point, self.quant_min, self.quant_max, None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer_enabled[0] == 1:
            self.activation_post_process(x.detach())
            self._update_qparams()
        if self.fake_quant_enabled[0] == 1 and x.numel() > 0:
            x = self._fake_quant(x)
        return x

    @torch.jit.export
    def extra_repr(self) -> str:
        return (
            f"fake_quant_enabled={self.fake_quant_enabled}, "
            f"observer_enabled={self.observer_enabled}, quant_min={self.quant_min}, "
            f"quant_max={self.quant_max}, dtype={self.dtype}, qscheme={self.qscheme}, "
            f"ch_axis={self.ch_axis}, scale={self.scale}, zero_point={self.zero_point}"
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # per-channel qparams change shape after the first observation: resize in place so the
        # buffers keep their device, then let the default loader copy the values
        for name in ("scale", "zero_point"):
            key = prefix + name
            if key in state_dict:
                getattr(self, name).resize_(state_dict[key].shape)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class FixedQParamsFakeQuantize(FakeQuantize):
    """Fake-quant with constant qparams, taken from a :class:`FixedQParamsObserver` (for ops with
    a known output range such as sigmoid or tanh). Per tensor only."""

    def __init__(self, observer: Any) -> None:
        super().__init__(observer=observer)
        if type(self.activation_post_process) is not FixedQParamsObserver:
            raise ValueError(
                f"observer: {type(self).__name__} needs a FixedQParamsObserver, got "
                f"{type(self.activation_post_process).__name__}"
            )
        if self.qscheme not in P.PER_TENSOR_SCHEMES:
            raise ValueError(f"qscheme: {type(self).__name__} is per tensor, got {self.qscheme}")
        # share the observer's buffers: the qparams are whatever the observer holds
        self.scale = self.activation_post_process.scale
        self.zero_point = self.activation_post_process.zero_point

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale, self.zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fake_quant_enabled[0] == 1 and x.numel() > 0:
            x = self._fake_quant(x)
        return x


class FusedMovingAvgObsFakeQuantize(FakeQuantize):
    """Moving-average min/max observation, qparams and fake-quant in one module (the QAT default).

    Numerically it is exactly :class:`FakeQuantize` around a
    :class:`~harness.quant.observers.MovingAverageMinMaxObserver` (or its per-channel variant):
    same running min/max, same qparams, same output, bit for bit. The range defaults to
    ``[0, 255]``; ``reduce_range`` halves it. ``observer_enabled``/``fake_quant_enabled`` are
    int64 here, as in torch.ao's fused module.
    """

    def __init__(
        self,
        observer: Any = MovingAverageMinMaxObserver,
        quant_min: int = 0,
        quant_max: int = 255,
        **observer_kwargs: Any,
    ) -> None:
        super().__init__(observer, quant_min, quant_max, **observer_kwargs)
        if not isinstance(
            self.activation_post_process,
            (MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver),
        ):
            raise ValueError(
                "observer: FusedMovingAvgObsFakeQuantize needs a moving-average min/max observer"
            )
        self.fake_quant_enabled = torch.tensor([1], dtype=torch.long)
        self.observer_enabled = torch.tensor([1], dtype=torch.long)
        self.is_symmetric_quant: bool = self.qscheme in P.SYMMETRIC_SCHEMES

    @torch.jit.export
    def extra_repr(self) -> str:
        return (
            f"fake_quant_enabled={self.fake_quant_enabled}, "
            f"observer_enabled={self.observer_enabled}, scale={self.scale}, "
            f"zero_point={self.zero_point}, dtype={self.dtype}, quant_min={self.quant_min}, "
            f"quant_max={self.quant_max}, qscheme={self.qscheme}"
        )


def _switch(mod: nn.Module, method: str) -> None:
    if isinstance(mod, FakeQuantizeBase) or _is_scripted_fake_quant(mod):
        getattr(mod, method)()


def _is_scripted_fake_quant(mod: nn.Module) -> bool:
    if not isinstance(mod, torch.jit.RecursiveScriptModule):
        return False
    name = mod.original_name
    return name in {
        "FakeQuantize",
        "FusedMovingAvgObsFakeQuantize",
        "FixedQParamsFakeQuantize",
    }


def enable_fake_quant(mod: nn.Module) -> None:
    """Turn fake-quant on if ``mod`` is a fake-quant module; ``model.apply(enable_fake_quant)``."""
    _switch(mod, "enable_fake_quant")


def disable_fake_quant(mod: nn.Module) -> None:
    """Turn fake-quant off (pass-through) if ``mod`` is a fake-quant module."""
    _switch(mod, "disable_fake_quant")


def enable_observer(mod: nn.Module) -> None:
    """Turn observation (qparams updates) on if ``mod`` is a fake-quant module."""
    _switch(mod, "enable_observer")


def disable_observer(mod: nn.Module) -> None:
    """Freeze the qparams of ``mod`` if it is a fake-quant module."""
    _switch(mod, "disable_observer")
