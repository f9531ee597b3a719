"""Float <-> integer edges of a quantized model: :class:`Quantize` and :class:`DeQuantize`."""

import torch
from torch import nn

from harness.quant import primitives as P
from harness.quant.nn._base import STATE_VERSION, as_scale, as_zero_point


class Quantize(nn.Module):
    """Quantize float input with fixed qparams: ``forward(x) -> (q, scale, zero_point)``.

    ``q = clamp(round(x * (1 / scale)) + zero_point, qmin, qmax)`` with ``(qmin, qmax)`` the
    full range of ``dtype`` (uint8 or int8). Buffers: ``scale`` float32 [1], ``zero_point``
    int64 [1]. ``from_observer(obs)`` takes the qparams an observer calculated.
    """

    _version = STATE_VERSION
    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(
        self, scale: float | torch.Tensor, zero_point: int | torch.Tensor, dtype=torch.uint8
    ) -> None:
        super().__init__()
        dtype = P.as_plain_dtype(dtype)
        if dtype not in (torch.uint8, torch.int8):
            raise ValueError(f"dtype: Quantize produces uint8 or int8 codes, got {dtype}")
        self.dtype = dtype
        lo, hi = P.dtype_bounds(dtype)
        self.quant_min = lo
        self.quant_max = hi
        self.register_buffer("scale", as_scale(scale, "scale"))
        self.register_buffer("zero_point", as_zero_point(zero_point, dtype, "zero_point"))

    @classmethod
    def from_observer(cls, observer: nn.Module) -> "Quantize":
        scale, zero_point = observer.calculate_qparams()
        return cls(scale, zero_point, observer.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not torch.jit.is_scripting() and not x.is_floating_point():
            raise ValueError(f"x: expected a floating-point tensor, got {x.dtype}")
        q = P.quantize_kernel(
            x, self.scale, self.zero_point, self.quant_min, self.quant_max, self.dtype, None
        )
        return q, self.scale.clone(), self.zero_point.clone()

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"


class DeQuantize(nn.Module):
    """``forward(q, scale, zero_point) -> (q - zero_point) * scale`` in float32."""

    def forward(
        self, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
    ) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if q.is_floating_point():
                raise ValueError(f"q: expected integer codes, got {q.dtype}")
            scale = as_scale(scale, "scale")
            zero_point = as_zero_point(zero_point, q.dtype, "zero_point")
        return P.dequantize_kernel(q, scale, zero_point, None)
