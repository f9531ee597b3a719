"""minq: int8 per-tensor symmetric weight quantization of ``nn.Linear`` (the library under test).

Weights are stored as int8 codes ``q = clamp(round(w / s), -127, 127)`` with one float scale
``s = max|w| / 127``; the forward pass computes ``x @ (q * s)^T + bias`` in float.
"""

from __future__ import annotations

import torch

__version__ = "0.1.0"


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` -> (int8 codes, scale)."""
    scale = w.abs().max().clamp(min=1e-12) / 127
    return torch.clamp(torch.round(w / scale), -127, 127).to(torch.int8), scale


class QuantLinear(torch.nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("bias", torch.zeros(out_features))

    @classmethod
    def from_float(cls, linear: torch.nn.Linear) -> QuantLinear:
        q = cls(linear.in_features, linear.out_features)
        q.weight, q.scale = quantize(linear.weight.detach())
        q.bias = linear.bias.detach().clone()
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.weight.float() * self.scale).t() + self.bias
