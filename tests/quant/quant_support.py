"""Markers and parameter lists shared by the quantization-core tests."""

import importlib

import pytest
import torch

from harness.compat import expected_torch_deprecations
from harness.quant import engines as E


def importable(module: str) -> bool:
    try:
        with expected_torch_deprecations():
            importlib.import_module(module)
    except ImportError:
        return False
    return True


# Differential tests need torch's own implementation; a torch without it skips them (saying so).
requires_torch_ao = pytest.mark.skipif(
    not importable("torch.ao.quantization"),
    reason=f"torch {torch.__version__} has no torch.ao.quantization to compare against",
)

# The native engines, each skipped with the engine's own reason where this torch lacks it.
NATIVE = [
    pytest.param(
        e,
        marks=pytest.mark.skipif(
            E.ENGINES[e].unavailable_reason() is not None,
            reason=str(E.ENGINES[e].unavailable_reason()),
        ),
    )
    for e in E.NATIVE_ENGINES
]
