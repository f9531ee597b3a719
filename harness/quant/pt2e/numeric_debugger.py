"""Numeric debugger: per-op debug handles on exported graphs, output loggers, SQNR comparison.

Debug handles
-------------
:func:`generate_numeric_debug_handle` gives every *handled node* of an exported graph a unique
positive integer, stored at ``node.meta[CUSTOM_KEY][NUMERIC_DEBUG_HANDLE_KEY]`` (i.e.
``node.meta["custom"]["numeric_debug_handle"]``). ``meta["custom"]`` is the one metadata slot
torch.export carries through its own transformations, which is what lets a handle identify "the same
op" in the float graph, the prepared graph, the converted graph and a reloaded ``.pt2``.
Measured on torch 2.13 (see tests/pt2e/test_numeric_debug_handle.py):

* ``copy.copy`` / ``copy.deepcopy`` of the ExportedProgram, ``ep.module()``, re-export of
  ``ep.module()`` (strict and non-strict), ``torch.export.save`` / ``load``: every handle kept.
* ``run_decompositions()``: every node a decomposed op expands into inherits that op's handle
  (``linear`` -> ``permute`` + ``addmm``, both with the linear's handle), so the set of handles
  is unchanged while some handles now sit on several nodes.
* ``torch.cond``: handles are assigned inside the branch subgraphs too (recursively) and survive
  the transformations above. Tracing a cond again (decompositions, save/load, re-export) stamps the
  cond's handle on the nodes torch creates around it (the branch ``get_attr`` nodes, the
  ``getitem`` unpacking its result, the branches' placeholders and outputs); those node kinds are
  never *handled* (below), so this does not create new handles.

Handled nodes (the ones that receive a handle, and the ones loggers watch) are ``call_function``
nodes except ``operator.getitem`` (a getitem only unpacks the output of the op it reads, which is
logged as a tuple), ``call_method`` nodes, and ``call_module`` nodes other than torch.export's
input guard (``_guards_fn``) and this module's :class:`OutputLogger`. Placeholders, ``get_attr``
(weights, branch subgraphs) and outputs are not handled. Handles are assigned in graph order,
breadth first over the graph and then its control-flow subgraphs, starting at 1, so on a freshly
exported graph ascending handle order is the top-level graph's topological order.

The pt2e passes keep handles meaningful through quantization: ``prepare_pt2e`` copies a node's
handle to its output observer and ``convert_pt2e`` copies it on to the dequantize node that
replaces that observer. After convert a handle therefore names the float op *and* the
dequantized value that flows on from it; for comparisons the last node in topological order that
carries a handle is the one whose value represents the handle.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.fx import GraphModule, Node

#: ``node.meta`` key torch.export preserves across serialization, re-export and decompositions.
CUSTOM_KEY = "custom"
#: Key of the debug handle inside ``node.meta[CUSTOM_KEY]``.
NUMERIC_DEBUG_HANDLE_KEY = "numeric_debug_handle"

# torch.export's input-checking submodule in ep.module(); it computes nothing worth a handle.
_GUARD_PREFIX = "_guards"


def _graph_module(model: ExportedProgram | GraphModule) -> GraphModule:
    if isinstance(model, ExportedProgram):
        return model.graph_module
    if isinstance(model, GraphModule):
        return model
    raise TypeError(
        "expected a torch.export.ExportedProgram or a torch.fx.GraphModule (e.g. "
        f"torch.export.export(model, example_inputs).module()), got {type(model).__qualname__}"
    )


def _subgraph_modules(gm: GraphModule) -> Iterator[GraphModule]:
    """GraphModules ``gm``'s graph reads (control-flow branches / bodies), in graph order."""
    seen: set[int] = set()
    for node in gm.graph.nodes:
        if node.op not in ("get_attr", "call_module"):
            continue
        obj: Any = gm
        try:
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, GraphModule) and id(obj) not in seen:
            seen.add(id(obj))
            yield obj


def iter_graph_modules(model: ExportedProgram | GraphModule) -> Iterator[GraphModule]:
    """The top-level GraphModule, then its control-flow subgraphs, breadth first."""
    queue = [_graph_module(model)]
    while queue:
        gm = queue.pop(0)
        yield gm
        queue.extend(_subgraph_modules(gm))


def is_handled_node(node: Node) -> bool:
    """True for the nodes that get a debug handle and a logger (see the module docstring)."""
    if node.op == "call_function":
        return node.target is not operator.getitem
    if node.op == "call_method":
        return True
    if node.op == "call_module":
        target = str(node.target)
        if target.startswith(_GUARD_PREFIX):
            return False
        owner = node.graph.owning_module
        return not (owner is not None and isinstance(getattr(owner, target, None), OutputLogger))
    return False


def get_numeric_debug_handle(node: Node) -> int | None:
    """The node's debug handle, or None."""
    custom = node.meta.get(CUSTOM_KEY)
    if isinstance(custom, dict):
        handle = custom.get(NUMERIC_DEBUG_HANDLE_KEY)
        if isinstance(handle, int):
            return handle
    return None


def set_numeric_debug_handle(node: Node, handle: int) -> None:
    """Store ``handle`` on ``node`` without mutating a ``custom`` dict other nodes may share."""
    custom = node.meta.get(CUSTOM_KEY)
    # torch may hand the same ``custom`` dict to several nodes it creates for one traced op, so
    # the dict is replaced, never updated in place.
    node.meta[CUSTOM_KEY] = {
        **(custom if isinstance(custom, dict) else {}),
        NUMERIC_DEBUG_HANDLE_KEY: handle,
    }


def _iter_nodes(model: ExportedProgram | GraphModule) -> Iterator[Node]:
    for gm in iter_graph_modules(model):
        yield from gm.graph.nodes


def generate_numeric_debug_handle(model: ExportedProgram | GraphModule) -> None:
    """Give every handled node of ``model`` (and of its control-flow subgraphs) a unique handle.

    Works in place. Nodes that already carry a handle keep it, so calling this again after
    editing the graph gives only the new nodes handles, numbered after the largest handle found
    anywhere in the graph (so a new handle never collides with an old one).
    """
    next_handle = 1 + max(
        (h for n in _iter_nodes(model) if (h := get_numeric_debug_handle(n)) is not None),
        default=0,
    )
    for node in _iter_nodes(model):
        if is_handled_node(node) and get_numeric_debug_handle(node) is None:
            set_numeric_debug_handle(node, next_handle)
            next_handle += 1


def collect_numeric_debug_handles(
    model: ExportedProgram | GraphModule, include: Callable[[Node], bool] = is_handled_node
) -> dict[Node, int]:
    """``node -> handle`` for every node (selected by ``include``) that carries a handle."""
    return {
        n: h
        for n in _iter_nodes(model)
        if include(n) and (h := get_numeric_debug_handle(n)) is not None
    }


class OutputLogger(torch.nn.Module):
    """Identity module that records, per forward call, the output of the node it follows.

    ``stats`` holds one entry per call: a detached copy of the tensor, or a list of detached
    copies for list/tuple outputs (non-tensor elements are kept as they are).
    """

    def __init__(
        self,
        debug_handle: int,
        node_name: str,
        op_name: str,
        nn_module_stack: object | None = None,
    ) -> None:
        super().__init__()
        self.debug_handle = debug_handle
        self.node_name = node_name
        self.op_name = op_name
        self.nn_module_stack = nn_module_stack
        self.stats: list[Any] = []

    def forward(self, x: Any) -> Any:
        self.stats.append(_snapshot(x))
        return x

    def extra_repr(self) -> str:
        return f"debug_handle={self.debug_handle}, node_name={self.node_name!r}, op={self.op_name}"


def _snapshot(x: Any) -> Any:
    # A copy, so later in-place ops in the graph cannot rewrite what was recorded.
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (list, tuple)):
        return [_snapshot(v) for v in x]
    return x
