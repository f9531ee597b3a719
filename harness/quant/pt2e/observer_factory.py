"""Turn quantization specs into observer / fake-quant modules, and read them back at convert.

The observer modules come from :mod:`harness.quant.observers` and
:mod:`harness.quant.fake_quantize` (torch.ao-shaped: ``dtype``, ``qscheme``, ``quant_min``,
``quant_max``, ``ch_axis``, ``is_dynamic``, ``calculate_qparams()``). This module adds only
:class:`DerivedObserver`, whose qparams are a function of other observers' qparams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from harness.quant import primitives as P
from harness.quant.pt2e.quantizer import (
    DerivedQuantizationSpec,
    FixedQParamsQuantizationSpec,
    QuantizationSpec,
    QuantizationSpecBase,
)


class DerivedObserver(torch.nn.Module):
    """Observes nothing; ``calculate_qparams()`` = ``derive_qparams_fn(source observers)``.

    For a bias quantized to int32 beside an int8 input and weight, the usual derivation is
    ``scale = s_input * s_weight``, ``zero_point = 0``: then ``q_bias`` adds directly to the
    int32 accumulator of ``sum(q_x * q_w)``, whose scale is exactly ``s_input * s_weight``.
    """

    def __init__(
        self,
        sources: list[torch.nn.Module],
        derive_qparams_fn: Callable[[list[torch.nn.Module]], tuple[torch.Tensor, torch.Tensor]],
        dtype: torch.dtype,
        quant_min: int | None,
        quant_max: int | None,
        qscheme: torch.qscheme | None,
        ch_axis: int | None,
    ) -> None:
        super().__init__()
        # A plain list, not submodules: the sources are registered elsewhere in the graph module.
        self._sources = list(sources)
        self.derive_qparams_fn = derive_qparams_fn
        self.dtype = dtype
        self.quant_min, self.quant_max = P.quant_range(dtype, quant_min, quant_max)
        self.qscheme = qscheme or torch.per_tensor_affine
        self.ch_axis = ch_axis
        self.is_dynamic = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.derive_qparams_fn(self._sources)


def create_observer(spec: QuantizationSpecBase, is_qat: bool) -> torch.nn.Module:
    """The observer (PTQ) or fake-quant (QAT) module for one spec; derived specs are built by
    :func:`create_derived_observer` once their sources exist."""
    if isinstance(spec, QuantizationSpec):
        kwargs: dict[str, Any] = {"dtype": spec.dtype, "is_dynamic": spec.is_dynamic}
        if spec.qscheme is not None:
            kwargs["qscheme"] = spec.qscheme
        if spec.quant_min is not None:
            kwargs["quant_min"] = spec.quant_min
            kwargs["quant_max"] = spec.quant_max
        if spec.qscheme in P.PER_CHANNEL_SCHEMES:
            kwargs["ch_axis"] = spec.ch_axis
        return spec.observer_or_fake_quant_ctr(**kwargs)
    if isinstance(spec, FixedQParamsQuantizationSpec):
        from harness.quant import observers

        kwargs = {
            "scale": spec.scale,
            "zero_point": spec.zero_point,
            "dtype": spec.dtype,
            "qscheme": spec.qscheme or torch.per_tensor_affine,
        }
        if spec.quant_min is not None:
            kwargs["quant_min"] = spec.quant_min
            kwargs["quant_max"] = spec.quant_max
        if is_qat:
            from harness.quant import fake_quantize

            return fake_quantize.FixedQParamsFakeQuantize(
                observer=observers.FixedQParamsObserver.with_args(**kwargs)
            )
        return observers.FixedQParamsObserver(**kwargs)
    raise TypeError(f"create_observer: cannot build an observer for {type(spec).__name__}")


def create_derived_observer(
    spec: DerivedQuantizationSpec, sources: list[torch.nn.Module]
) -> DerivedObserver:
    return DerivedObserver(
        sources,
        spec.derive_qparams_fn,
        spec.dtype,
        spec.quant_min,
        spec.quant_max,
        spec.qscheme,
        spec.ch_axis,
    )


@dataclass(frozen=True)
class QuantInfo:
    """What convert needs to know about one observer."""

    dtype: torch.dtype
    qscheme: torch.qscheme
    quant_min: int
    quant_max: int
    ch_axis: int | None
    is_dynamic: bool
    eps: float


_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _attr(module: torch.nn.Module, name: str, default: Any = None) -> Any:
    """Read ``name`` from a fake-quant or, failing that, from its inner observer."""
    value = getattr(module, name, None)
    if value is None:
        inner = getattr(module, "activation_post_process", None)
        if inner is not None:
            value = getattr(inner, name, None)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return default if value is None else value


def quant_info(module: torch.nn.Module) -> QuantInfo | None:
    """The quantization an observer stands for; ``None`` if it keeps values in float."""
    dtype = _attr(module, "dtype")
    if dtype is None or dtype in _FLOAT_DTYPES:
        return None
    dtype = P.as_plain_dtype(dtype)
    qmin, qmax = _attr(module, "quant_min"), _attr(module, "quant_max")
    if qmin is None or qmax is None:
        qmin, qmax = P.quant_range(dtype, None, None, bool(_attr(module, "reduce_range", False)))
    qscheme = _attr(module, "qscheme", torch.per_tensor_affine)
    ch_axis = _attr(module, "ch_axis") if qscheme in P.PER_CHANNEL_SCHEMES else None
    return QuantInfo(
        dtype=dtype,
        qscheme=qscheme,
        quant_min=int(qmin),
        quant_max=int(qmax),
        ch_axis=None if ch_axis is None else int(ch_axis),
        is_dynamic=bool(_attr(module, "is_dynamic", False)),
        eps=float(_attr(module, "eps", P.DEFAULT_EPS)),
    )
