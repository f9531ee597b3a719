"""Normalized text signatures of graphs (TorchScript, FX GraphModule, ExportedProgram).

A signature is plain text, stable across runs and small enough to review in a diff:

    kind: fx
    ops:
      quantize_per_tensor
      QuantizedLinearReLU
      dequantize
    counts:
      dequantize: 1
      ...
    qdq: quantize_per_tensor -> QuantizedLinearReLU -> dequantize
    get_attr:
      _input_scale_0

``ops`` is the op sequence (constants, list/tuple plumbing and placeholders dropped),
``counts`` its histogram, ``qdq`` the sub-sequence of quantize / dequantize / quantized ops (the
quantization pattern), and ``get_attr`` the sorted attribute targets the graph reads.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

# TorchScript node kinds that are plumbing, not computation.
_TS_DROPPED = {
    "prim::Constant",
    "prim::ListConstruct",
    "prim::TupleConstruct",
    "prim::TupleUnpack",
    "prim::ListUnpack",
    "prim::NumToTensor",
    "prim::RaiseException",
    "prim::Uninitialized",
    "aten::__getitem__",
    "prim::unchecked_cast",
    "aten::size",
    "aten::len",
    "aten::format",
}


def _is_quant_op(op: str) -> bool:
    low = op.lower()
    return "quantize" in low or low.startswith("quantized") or "quantized_decomposed" in low


def _ts_ops(block: Any, ops: list[str], attrs: list[str]) -> None:
    for node in block.nodes():
        kind = node.kind()
        if kind == "prim::GetAttr":
            attrs.append(node.s("name"))
            continue
        if kind not in _TS_DROPPED:
            ops.append(kind)
        for sub in node.blocks():
            _ts_ops(sub, ops, attrs)


def _fx_target(node: Any, root: Any) -> str:
    if node.op == "call_module":
        return type(root.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return str(node.target)
    target = node.target
    name = getattr(target, "__name__", None)
    if isinstance(target, torch._ops.OpOverload):
        return str(target)  # e.g. quantized_decomposed.quantize_per_tensor.default
    return name or str(target)


def _fx_ops(gm: Any) -> tuple[list[str], list[str]]:
    ops: list[str] = []
    attrs: list[str] = []
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            attrs.append(str(node.target))
        elif node.op in ("call_function", "call_module", "call_method"):
            target = _fx_target(node, gm)
            if target in ("getitem", "<built-in function getitem>"):
                continue
            ops.append(target)
    return ops, attrs


def signature(obj: Any) -> str:
    """The normalized signature of a ScriptModule, GraphModule or ExportedProgram."""
    if isinstance(obj, torch.export.ExportedProgram):
        kind = "exported"
        ops, attrs = _fx_ops(obj.graph_module)
        attrs += [
            f"{s.kind.name.lower()}:{s.target}" for s in obj.graph_signature.input_specs if s.target
        ]
    elif isinstance(obj, torch.fx.GraphModule):
        kind = "fx"
        ops, attrs = _fx_ops(obj)
    elif isinstance(obj, torch.jit.ScriptModule):
        kind = "torchscript"
        ops, attrs = [], []
        _ts_ops(obj.inlined_graph, ops, attrs)
    else:
        raise TypeError(f"no graph signature for {type(obj).__name__}")
    return render(kind, ops, attrs)


def render(kind: str, ops: list[str], attrs: list[str]) -> str:
    """Lay a signature out as text (see module docstring)."""
    lines = [f"kind: {kind}", "ops:"]
    lines += [f"  {op}" for op in ops]
    lines.append("counts:")
    lines += [f"  {op}: {n}" for op, n in sorted(Counter(ops).items())]
    lines.append("qdq: " + " -> ".join(op for op in ops if _is_quant_op(op)))
    lines.append("get_attr:")
    lines += [f"  {a}" for a in sorted(set(attrs))]
    return "\n".join(lines) + "\n"


def section(text: str, name: str) -> list[str]:
    """The indented lines of one section (``ops``, ``counts``, ``get_attr``) of a signature."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if not line.startswith("  "):
            inside = line.rstrip(":") == name
            continue
        if inside:
            out.append(line.strip())
    return out
