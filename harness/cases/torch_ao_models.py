"""Small float models used by cases. Kept in their own module because the ``package`` format
interns this module's source into the package (so a past package carries the model code)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearReluFunctional(nn.Module):
    """y = relu(x @ W^T + b) written with functional calls, so FX quantization must read the
    weight and bias through ``get_attr`` nodes (the targets the package case checks)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n, n))
        self.b = nn.Parameter(torch.randn(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.linear(x, self.w, self.b))


class LinearReLUNet(nn.Module):
    """Linear followed by ReLU as two modules (the default-QAT-qconfig case)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n, n)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.linear(x))


class LSTMHolder(nn.Module):
    """Holds an LSTM as a submodule, so saved state_dict keys look like a real model's."""

    def __init__(self, lstm: nn.Module) -> None:
        super().__init__()
        self.lstm = lstm

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        return self.lstm(x)
