"""Fold weight quantization into integer constants.

After convert a weight reaches its consumer as ``get_attr(w) [-> t/permute ...] -> quantize ->
dequantize``. Everything before the ``quantize`` depends only on constants, so it is evaluated
once and replaced by a ``get_attr`` of the integer tensor (``_frozen_param<i>``): the saved graph
then stores int8 weights and only the ``dequantize`` runs. Only chains that end in a quantize
op are folded; other constant expressions (a transposed parameter added to an activation) stay
as they are.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from harness.quant.pt2e.graph_utils import (
    copy_meta,
    erase_dead,
    fetch_attr,
    is_pure,
    unique_attr_name,
)

qd = torch.ops.quantized_decomposed
# Metadata describing a node's *value* (float, for the weight): not carried over to the folded
# integer constant. Older torch releases also record ``example_value``.
VALUE_META_KEYS = ("val", "tensor_meta", "example_value")
QUANTIZE_OPS = (qd.quantize_per_tensor.default, qd.quantize_per_channel.default)


def _is_constant(node: Node, memo: dict[Node, bool]) -> bool:
    if node in memo:
        return memo[node]
    if node.op == "get_attr":
        result = True
    elif node.op == "call_function" and is_pure(node):
        result = all(_is_constant(a, memo) for a in node.all_input_nodes)
    else:
        result = False
    memo[node] = result
    return result


def _evaluate(model: GraphModule, node: Node, cache: dict[Node, object]) -> object:
    if node in cache:
        return cache[node]
    if node.op == "get_attr":
        value = fetch_attr(model, str(node.target))
        if isinstance(value, torch.Tensor):
            value = value.detach()
    else:
        args = torch.fx.node.map_arg(node.args, lambda n: _evaluate(model, n, cache))
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: _evaluate(model, n, cache))
        with torch.no_grad():
            value = node.target(*args, **kwargs)  # type: ignore[operator]
    cache[node] = value
    return value


def _origin_attr(node: Node) -> Node:
    """The get_attr a constant chain starts from, following the first argument (the weight)."""
    while node.op != "get_attr":
        node = next(a for a in node.all_input_nodes)
    return node


def _fake_like(origin: Node, value: torch.Tensor) -> torch.Tensor:
    """A value description of the folded tensor in the fake mode the graph was exported with
    (a shape/dtype-only ``meta`` tensor when there is none)."""
    fake_mode = getattr(origin.meta.get("val"), "fake_mode", None)
    if fake_mode is not None:
        return fake_mode.from_tensor(value, static_shapes=True)
    return torch.empty_like(value, device="meta")


def fold_quantize(model: GraphModule) -> GraphModule:
    """Replace each quantize op on a constant input by its precomputed integer result."""
    memo: dict[Node, bool] = {}
    cache: dict[Node, object] = {}
    graph = model.graph
    folded = False
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in QUANTIZE_OPS:
            continue
        if not _is_constant(node, memo):
            continue
        value = _evaluate(model, node, cache)
        assert isinstance(value, torch.Tensor)
        name = unique_attr_name(model, "_frozen_param")
        model.register_buffer(name, value.contiguous())
        with graph.inserting_before(node):
            const = graph.get_attr(name)
        # Keep the weight's provenance (nn_module_stack, from_node, stack_trace, debug handle):
        # the constant *is* that weight, quantized. Only the value metadata changes, because a
        # stale float ``val`` would describe the wrong dtype to later passes.
        origin = _origin_attr(node.args[0])  # type: ignore[arg-type]
        copy_meta(origin, const, skip=VALUE_META_KEYS)
        const.meta["val"] = _fake_like(origin, value)
        node.replace_all_uses_with(const)
        erase_dead(model, [node])
        folded = True
    if folded:
        graph.lint()
        model.recompile()
    return model
