"""Static quantized Linear and LinearReLU on plain integer tensors.

``y = x @ W^T + b`` computed as (see :mod:`harness.quant.engines` for the exact specification)::

    acc = sum_k (q_x - z_x)(q_w - z_w)              exact integer accumulation
    q_y = clamp(round((acc + round(b / (s_x s_w))) * s_x s_w / s_y) + z_y, qmin, qmax)

and for LinearReLU additionally ``q_y = max(q_y, z_y)`` (ReLU on the real value is a clamp at
the code of 0.0).

``forward(q_x, x_scale, x_zero_point) -> (q_y, scale, zero_point)``: ``q_x`` uint8 or int8
codes of shape ``[..., in_features]``, ``x_scale`` one float > 0, ``x_zero_point`` one integer
in the codes' range; ``q_y`` has shape ``[..., out_features]`` and the module's output dtype.
"""

from typing import Any

import torch
from torch import nn

from harness.quant import engines as E
from harness.quant import int_mm as IM
from harness.quant import primitives as P
from harness.quant.nn._base import (
    QuantizedModule,
    as_scale,
    as_zero_point,
    check_codes,
    in_graph_capture,
    native_guard,
    weight_qparams_from_observer,
)

ACTIVATION_DTYPES = (torch.uint8, torch.int8)


def qconfig_of(mod: nn.Module, inner: nn.Module) -> Any:
    """The ``.qconfig`` of a float module or of the Linear/Conv inside its fused wrapper."""
    qconfig = getattr(mod, "qconfig", None) or getattr(inner, "qconfig", None)
    if qconfig is None:
        raise ValueError("float_module: has no .qconfig (set one before from_float)")
    return qconfig


def output_observer(mod: nn.Module) -> nn.Module:
    """The calibrated output observer (``activation_post_process``) of a float module."""
    obs = getattr(mod, "activation_post_process", None)
    if obs is None:
        raise ValueError(
            "float_module: has no .activation_post_process observer (static quantization "
            "needs the calibrated output range)"
        )
    return obs


def unwrap_fused(mod: nn.Module, inner_type: type, relu: bool) -> nn.Module:
    """The float Linear/Conv inside ``mod``: ``mod`` itself, or ``mod[0]`` of a fused
    ``(module, ReLU)`` sequence such as torch.ao's ``LinearReLU`` / ``ConvReLU2d``."""
    if relu:
        # len >= 2: the calibrated observer may have been attached as a third child
        if isinstance(mod, nn.Sequential) and len(mod) >= 2 and isinstance(mod[1], nn.ReLU):
            mod = mod[0]
        else:
            raise ValueError(
                f"float_module: expected a fused ({inner_type.__name__}, ReLU) sequence, got "
                f"{type(mod).__name__}"
            )
    if type(mod) is not inner_type:
        raise ValueError(f"float_module: expected {inner_type.__name__}, got {type(mod).__name__}")
    return mod


class StaticWeightModule(QuantizedModule):
    """Buffers and from_float shared by static Linear / Conv (weight int8, output codes)."""

    weight: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    bias: torch.Tensor | None
    scale: torch.Tensor
    zero_point: torch.Tensor
    _tensor_names = ("weight", "weight_scale", "weight_zero_point", "bias", "scale", "zero_point")

    def _init_state(
        self, weight_shape: list[int], out_channels: int, bias: bool, dtype: torch.dtype
    ) -> None:
        dtype = P.as_plain_dtype(dtype)
        if dtype not in ACTIVATION_DTYPES:
            raise ValueError(f"dtype: output codes must be uint8 or int8, got {dtype}")
        self.dtype = dtype
        lo, hi = P.dtype_bounds(dtype)
        self.quant_min = lo
        self.quant_max = hi
        # Deterministic defaults (torch.ao leaves weights uninitialized): zero weight, unit
        # scales, zero zero-points.
        self.register_buffer("weight", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(1))
        self.register_buffer("weight_zero_point", torch.zeros(1, dtype=torch.int64))
        self._set_tensor("bias", torch.zeros(out_channels) if bias else None)
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int64))

    def set_weight_bias(
        self,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        weight_zero_point: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> None:
        """Install int8 weight codes with per-tensor ([1]) or per-output-channel ([C])
        qparams, and a float bias (or None)."""
        if weight.dtype != torch.int8:
            raise ValueError(f"weight: expected int8 codes, got {weight.dtype}")
        if tuple(weight.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"weight: expected shape {tuple(self.weight.shape)}, got {tuple(weight.shape)}"
            )
        self.weight = weight.contiguous()
        self.weight_scale = torch.as_tensor(weight_scale, dtype=torch.float32).reshape(-1)
        self.weight_zero_point = torch.as_tensor(weight_zero_point).to(torch.int64).reshape(-1)
        self._set_tensor("bias", None if bias is None else bias.detach().float().clone())
        self._check_state()

    def set_output_qparams(self, scale: Any, zero_point: Any) -> None:
        self.scale = as_scale(scale, "scale")
        self.zero_point = as_zero_point(zero_point, self.dtype, "zero_point")

    def _check_state(self) -> None:
        channels = self.weight.shape[0]
        if self.weight.dtype != torch.int8:
            raise ValueError(f"weight: expected int8 codes, got {self.weight.dtype}")
        for name in ("weight_scale", "weight_zero_point"):
            n = getattr(self, name).numel()
            if n not in (1, channels):
                raise ValueError(f"{name}: {n} values for {channels} output channels")
        s = self.weight_scale
        if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
            raise ValueError("weight_scale: must be finite and > 0")
        if self.bias is not None and self.bias.numel() != channels:
            raise ValueError(f"bias: {self.bias.numel()} values for {channels} channels")
        as_scale(self.scale, "scale")
        as_zero_point(self.zero_point, self.dtype, "zero_point")

    def _load_weights_from_float(self, inner: nn.Module, qconfig: Any, app: nn.Module) -> None:
        q, s, z, _, _ = weight_qparams_from_observer(qconfig.weight(), inner.weight)
        if q.dtype != torch.int8:
            raise ValueError(f"qconfig: weights must quantize to int8, got {q.dtype}")
        bias = None if inner.bias is None else inner.bias.detach()
        self.set_weight_bias(q, s, z, bias)
        scale, zero_point = app.calculate_qparams()
        self.set_output_qparams(scale, zero_point)

    def _check_input(
        self, x_q: torch.Tensor, x_scale: Any, x_zero_point: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_codes(x_q, "x_q", ACTIVATION_DTYPES, "")
        return as_scale(x_scale, "x_scale"), as_zero_point(x_zero_point, x_q.dtype, "x_zero_point")


class Linear(StaticWeightModule):
    """Static quantized Linear. See the module docstring for the math and the call convention.

    Buffers (state_dict v2): ``weight`` int8 [out, in]; ``weight_scale`` float32 [out] or [1];
    ``weight_zero_point`` int64 like it; ``bias`` float32 [out] (absent without bias);
    ``scale`` float32 [1] and ``zero_point`` int64 [1] (output qparams).
    """

    _FLOAT_MODULE = nn.Linear
    _relu = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: torch.dtype = torch.uint8,
        engine: str = "",
    ) -> None:
        super().__init__(engine)
        if in_features <= 0 or out_features <= 0:
            raise ValueError(
                f"in_features/out_features: must be positive, got {in_features}, {out_features}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.relu = self._relu
        self._init_state([out_features, in_features], out_features, bias, dtype)

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> "Linear":
        """Quantize a float ``nn.Linear`` (for LinearReLU: a fused ``(Linear, ReLU)``) that
        carries ``.qconfig`` and a calibrated ``.activation_post_process``."""
        inner = unwrap_fused(mod, cls._FLOAT_MODULE, cls._relu)
        qconfig = qconfig_of(mod, inner)
        app = output_observer(mod)
        m = cls(
            inner.in_features,
            inner.out_features,
            inner.bias is not None,
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
                if x_q.dim() < 1 or x_q.shape[-1] != self.in_features:
                    raise ValueError(
                        f"x_q: expected shape [..., {self.in_features}], got {tuple(x_q.shape)}"
                    )
            engine = self._resolved_engine()
            if engine in E.NATIVE_ENGINES:
                return self._forward_native(engine, x_q, x_scale, x_zero_point)
            if engine == "int_mm" and not in_graph_capture():
                return self._forward_int_mm(x_q, x_scale, x_zero_point)
        x2 = x_q.reshape(-1, self.in_features)
        acc = E.matmul_acc(engine, x2, x_zero_point, self.weight, self.weight_zero_point)
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
        shape = list(x_q.shape[:-1])
        shape.append(self.out_features)
        return q.reshape(shape), self.scale.clone(), self.zero_point.clone()

    @torch.jit.unused
    def _forward_int_mm(
        self, x_q: torch.Tensor, x_scale: torch.Tensor, x_zero_point: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eager int_mm: the weight-side terms prepared once, the per-call part in int32
        (:mod:`harness.quant.int_mm`); the same numbers as the graph path and ``reference``."""
        names = ("weight", "weight_zero_point")
        weight = self._int_mm_prepared(
            names, lambda: IM.prepare(self.weight, self.weight_zero_point)
        )
        zx = int(x_zero_point)
        a, c, d = IM.shift(x_q.reshape(-1, self.in_features), zx)

        def terms() -> tuple[IM.Correction, torch.Tensor]:
            bias = self.bias
            b_q = None if bias is None else E.integer_bias(bias, x_scale, self.weight_scale)
            mult = IM.multiplier(x_scale, self.weight_scale, self.scale)
            return IM.correction(weight, c, d, b_q), mult

        corr, mult = self._int_mm_terms(
            (float(x_scale), zx), (*names, "bias", "weight_scale", "scale"), terms
        )
        total = IM.accumulate(weight, a, corr)
        q = IM.requantize(
            total, mult, int(self.zero_point), self.quant_min, self.quant_max, self.dtype
        )
        if self.relu:
            q = torch.maximum(q, self.zero_point.to(q.dtype))
        shape = [*x_q.shape[:-1], self.out_features]
        return q.reshape(shape), self.scale.clone(), self.zero_point.clone()

    @torch.jit.unused
    def _forward_native(
        self, engine: str, x_q: torch.Tensor, x_scale: torch.Tensor, x_zero_point: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with E.native_backend(engine), native_guard():

            def pack() -> Any:
                w = E.to_torch_qweight(self.weight, self.weight_scale, self.weight_zero_point)
                return torch.ops.quantized.linear_prepack(w, self.bias)

            packed = self._native_cached(
                (engine, *self._tensor_key("weight", "weight_scale", "weight_zero_point", "bias")),
                pack,
            )
            qx = E.to_torch_qtensor(x_q.reshape(-1, self.in_features), x_scale, x_zero_point)
            op = torch.ops.quantized.linear_relu if self.relu else torch.ops.quantized.linear
            qy = op(qx, packed, float(self.scale), int(self.zero_point))
            q = E.from_torch_qtensor(qy)
        shape = [*x_q.shape[:-1], self.out_features]
        return q.reshape(shape), self.scale.clone(), self.zero_point.clone()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, dtype={self.dtype}, {super().extra_repr()}"
        )


class LinearReLU(Linear):
    """Static quantized Linear followed by ReLU: ``q_y = max(linear(q_x), z_y)``.

    ``from_float`` takes a fused ``(nn.Linear, nn.ReLU)`` sequence (torch.ao's
    ``torch.ao.nn.intrinsic.LinearReLU`` is one).
    """

    _relu = True
