"""Static quantized Conv1d/2d/3d and ConvReLU2d/3d on plain integer tensors.

Same arithmetic as :mod:`harness.quant.nn.linear`, over im2col patches::

    acc[b, o, p] = sum_{c, k} (q_x[b, c, p*stride + k*dilation - padding] - z_x)(q_w[o, c, k] - z_w[o])
    q_y = clamp(round((acc + round(bias / (s_x s_w))) * s_x s_w / s_y) + z_y, qmin, qmax)

Out-of-bounds taps read ``z_x`` (zero padding of the real signal), so they add nothing.
ConvReLU additionally clamps at ``z_y``. Only ``padding_mode="zeros"`` exists (as in
torch.ao's quantized convolutions).

``forward(q_x, x_scale, x_zero_point) -> (q_y, scale, zero_point)`` with ``q_x`` of shape
``[B, C, *spatial]`` (batched; rank 3/4/5 for Conv1d/2d/3d), uint8 or int8.
"""

from typing import Any

import torch
from torch import nn

from harness.quant import engines as E
from harness.quant import int_mm as IM
from harness.quant import primitives as P
from harness.quant.nn._base import in_graph_capture, native_guard
from harness.quant.nn.linear import (
    StaticWeightModule,
    output_observer,
    qconfig_of,
    unwrap_fused,
)

IntOrTuple = int | tuple[int, ...] | list[int]


def _ntuple(value: IntOrTuple, n: int, name: str) -> list[int]:
    out = [value] * n if isinstance(value, int) else [int(v) for v in value]
    if len(out) != n:
        raise ValueError(f"{name}: expected {n} values, got {value!r}")
    return out


class _ConvNd(StaticWeightModule):
    """Shared implementation; subclasses fix the number of spatial dimensions."""

    _NDIM = 2
    _FLOAT_MODULE: type = nn.Conv2d
    _relu = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: IntOrTuple = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        dtype: torch.dtype = torch.uint8,
        engine: str = "",
    ) -> None:
        super().__init__(engine)
        n = self._NDIM
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode: only 'zeros' is supported, got {padding_mode!r}")
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups: {groups} must divide in_channels {in_channels} and out_channels "
                f"{out_channels}"
            )
        if isinstance(padding, str):
            raise ValueError(f"padding: give explicit sizes, got {padding!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _ntuple(kernel_size, n, "kernel_size")
        self.stride = _ntuple(stride, n, "stride")
        self.padding = _ntuple(padding, n, "padding")
        self.dilation = _ntuple(dilation, n, "dilation")
        self.groups = groups
        self.padding_mode = padding_mode
        self.relu = self._relu
        weight_shape = [out_channels, in_channels // groups, *self.kernel_size]
        self._init_state(weight_shape, out_channels, bias, dtype)

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> "_ConvNd":
        """Quantize a float conv (for ConvReLU: a fused ``(ConvNd, ReLU)``) that carries
        ``.qconfig`` and a calibrated ``.activation_post_process``."""
        inner = unwrap_fused(mod, cls._FLOAT_MODULE, cls._relu)
        qconfig = qconfig_of(mod, inner)
        app = output_observer(mod)
        if isinstance(inner.padding, str):
            raise ValueError(f"float_module: padding={inner.padding!r} is not supported")
        m = cls(
            inner.in_channels,
            inner.out_channels,
            inner.kernel_size,
            inner.stride,
            inner.padding,
            inner.dilation,
            inner.groups,
            inner.bias is not None,
            inner.padding_mode,
            P.as_plain_dtype(app.dtype),
        )
        m._load_weights_from_float(inner, qconfig, app)
        return m

    def forward(
        self, x_q: torch.Tensor, x_scale: torch.Tensor, x_zero_point: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        engine = self.engine if self.engine != "" else "reference"
        if not torch.jit.is_scripting():
            if not torch.jit.is_tracing():  # traced shapes are tensors: check eagerly only
                x_scale, x_zero_point = self._check_input(x_q, x_scale, x_zero_point)
                if x_q.dim() != self._NDIM + 2 or x_q.shape[1] != self.in_channels:
                    raise ValueError(
                        f"x_q: expected shape [B, {self.in_channels}, "
                        f"{', '.join('*' * self._NDIM)}], got {tuple(x_q.shape)}"
                    )
            engine = self._resolved_engine()
            if engine in E.NATIVE_ENGINES:
                return self._forward_native(engine, x_q, x_scale, x_zero_point)
            if engine == "int_mm" and not in_graph_capture():
                return self._forward_int_mm(x_q, x_scale, x_zero_point)
        acc = E.conv_acc(
            engine,
            x_q,
            x_zero_point,
            self.weight,
            self.weight_zero_point,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        q = E.requantize(
            acc,
            self.bias,
            x_scale,
            self.weight_scale,
            self.scale,
            self.zero_point,
            self.quant_min,
            self.quant_max,
            self.dtype,
            1,
        )
        if self.relu:
            q = torch.maximum(q, self.zero_point.to(q.dtype))
        return q, self.scale.clone(), self.zero_point.clone()

    @torch.jit.unused
    def _forward_int_mm(
        self, x_q: torch.Tensor, x_scale: torch.Tensor, x_zero_point: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eager int_mm (:mod:`harness.quant.int_mm`): the input is shifted to int8 and padded
        channels-last once, each group's patches go through its prepared weight, and the codes
        are requantized in the [B * L, O] layout the GEMM returns; only the uint8 result is
        permuted to [B, O, *out]. The same numbers as :func:`~harness.quant.engines.conv_acc`
        plus :func:`~harness.quant.engines.requantize`."""
        o, groups = self.out_channels, self.groups
        og, cg = o // groups, self.in_channels // groups

        def prepare() -> list[IM.Weight]:
            rows = IM.conv_weight_rows(self.weight)
            zw = self.weight_zero_point.reshape(-1).expand(o)
            return [
                IM.prepare(rows[g * og : (g + 1) * og], zw[g * og : (g + 1) * og])
                for g in range(groups)
            ]

        names = ("weight", "weight_zero_point")
        weights = self._int_mm_prepared(names, prepare)
        zx = int(x_zero_point)
        a, c, d = IM.shift(x_q, zx)

        def terms() -> tuple[list[IM.Correction], torch.Tensor]:
            bias = self.bias
            b_q = None if bias is None else E.integer_bias(bias, x_scale, self.weight_scale)
            corrs = [
                IM.correction(w, c, d, None if b_q is None else b_q[g * og : (g + 1) * og])
                for g, w in enumerate(weights)
            ]
            return corrs, IM.multiplier(x_scale, self.weight_scale, self.scale)

        corrs, mult = self._int_mm_terms(
            (float(x_scale), zx), (*names, "bias", "weight_scale", "scale"), terms
        )
        padded = IM.pad_channels_last(a, list(self.padding), -c)  # -c: the code of a real 0
        kernel = list(self.weight.shape[2:])
        totals = []
        out_shape: list[int] = []
        for g, (weight, corr) in enumerate(zip(weights, corrs, strict=True)):
            cols, out_shape = IM.patches(
                padded[..., g * cg : (g + 1) * cg], kernel, list(self.stride), list(self.dilation)
            )
            totals.append(IM.accumulate(weight, cols, corr, reuse=groups == 1))
        total = totals[0] if groups == 1 else torch.cat(totals, dim=1)
        q = IM.requantize(
            total, mult, int(self.zero_point), self.quant_min, self.quant_max, self.dtype
        )
        if self.relu:
            q = torch.maximum(q, self.zero_point.to(q.dtype))
        q = q.reshape([x_q.shape[0], *out_shape, o]).movedim(-1, 1).contiguous()
        return q, self.scale.clone(), self.zero_point.clone()

    @torch.jit.unused
    def _forward_native(
        self, engine: str, x_q: torch.Tensor, x_scale: torch.Tensor, x_zero_point: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self._NDIM
        with E.native_backend(engine), native_guard():

            def pack() -> Any:
                w = E.to_torch_qweight(self.weight, self.weight_scale, self.weight_zero_point)
                prepack = getattr(torch.ops.quantized, f"conv{n}d_prepack")
                return prepack(w, self.bias, self.stride, self.padding, self.dilation, self.groups)

            packed = self._native_cached(
                (engine, *self._tensor_key("weight", "weight_scale", "weight_zero_point", "bias")),
                pack,
            )
            qx = E.to_torch_qtensor(x_q, x_scale, x_zero_point)
            op = getattr(torch.ops.quantized, f"conv{n}d_relu" if self.relu else f"conv{n}d")
            qy = op(qx, packed, float(self.scale), int(self.zero_point))
            q = E.from_torch_qtensor(qy)
        return q, self.scale.clone(), self.zero_point.clone()

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None}, dtype={self.dtype}, "
            f"engine={self.engine or '<context>'}"
        )


class Conv1d(_ConvNd):
    """Static quantized Conv1d (input [B, C, L]); buffers as :class:`~.linear.Linear`, weight
    int8 [out, in / groups, k]."""

    _NDIM = 1
    _FLOAT_MODULE = nn.Conv1d


class Conv2d(_ConvNd):
    """Static quantized Conv2d (input [B, C, H, W]); weight int8 [out, in / groups, kh, kw]."""

    _NDIM = 2
    _FLOAT_MODULE = nn.Conv2d


class Conv3d(_ConvNd):
    """Static quantized Conv3d (input [B, C, D, H, W]); weight int8 [out, in / groups, kd, kh,
    kw]."""

    _NDIM = 3
    _FLOAT_MODULE = nn.Conv3d


class ConvReLU2d(Conv2d):
    """Conv2d + ReLU (``max(q_y, z_y)``); ``from_float`` takes a fused (Conv2d, ReLU)."""

    _relu = True


class ConvReLU3d(Conv3d):
    """Conv3d + ReLU (``max(q_y, z_y)``); ``from_float`` takes a fused (Conv3d, ReLU)."""

    _relu = True
