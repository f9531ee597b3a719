"""Shared setup for the pt2e tests: deterministic weights and inputs."""

import pytest
import torch

import harness.quant  # noqa: F401  (registers torch.ops.quantized_decomposed)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
