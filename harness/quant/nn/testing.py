"""Helpers to serialize a qbc module in memory through TorchScript and torch.export and load
it back, used by the unit tests and usable by case builders."""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn

from harness import compat
from harness.quant import engines as E
from harness.quant.nn._base import QuantizedModule


def script_roundtrip(module: nn.Module, engine: str) -> torch.jit.ScriptModule:
    """``torch.jit.script`` with every qbc module pinned to ``engine`` (TorchScript cannot see
    ``use_engine``), saved to bytes and loaded back; the modules' engines are restored."""
    previous = {m: m.engine for m in module.modules() if isinstance(m, QuantizedModule)}
    try:
        for m in previous:
            m.set_engine(engine)
        with compat.expected_torch_deprecations():
            scripted = torch.jit.script(module)
    finally:
        for m, e in previous.items():
            m.engine = e
    with compat.expected_torch_deprecations():
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
        buf.seek(0)
        return torch.jit.load(buf)


def trace_roundtrip(
    module: nn.Module, example: tuple[Any, ...], engine: str
) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` on ``example`` under ``use_engine(engine)``, saved and loaded back."""
    with E.use_engine(engine), compat.expected_torch_deprecations():
        traced = torch.jit.trace(module, example, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        buf.seek(0)
        return torch.jit.load(buf)


def export_roundtrip(module: nn.Module, example: tuple[Any, ...], engine: str) -> nn.Module:
    """``torch.export.export`` under ``use_engine(engine)``, saved and loaded back; returns the
    loaded program's callable module."""
    with E.use_engine(engine):
        program = torch.export.export(module, example)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    return torch.export.load(buf).module()


def exported_ops(module: nn.Module, example: tuple[Any, ...], engine: str) -> list[str]:
    """The call_function targets of the exported graph, as strings (graph cleanliness checks)."""
    with E.use_engine(engine):
        program = torch.export.export(module, example)
    return [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
