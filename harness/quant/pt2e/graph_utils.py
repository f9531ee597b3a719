"""Small helpers over ``torch.fx`` graphs shared by the pt2e passes."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.fx import GraphModule, Node

#: Prefix of the observer / fake-quant submodules that prepare inserts (torch uses the same one,
#: and tools look for it).
OBSERVER_PREFIX = "activation_post_process_"

# aten ops that compute a weight-like value from constants with no side effects: folding through
# them is safe.
_SIDE_EFFECT_FREE_NAMESPACES = ("aten", "quantized_decomposed")


def node_inputs(node: Node) -> list[Node]:
    """Every ``Node`` among ``node``'s args and kwargs (nested lists flattened), in order."""
    out: list[Node] = []

    def visit(a: Any) -> None:
        if isinstance(a, Node):
            if a not in out:
                out.append(a)
        elif isinstance(a, (list, tuple)):
            for x in a:
                visit(x)
        elif isinstance(a, dict):
            for x in a.values():
                visit(x)

    visit(node.args)
    visit(node.kwargs)
    return out


def is_guard(node: Node) -> bool:
    """The ``_guards_fn`` call torch.export inserts to check inputs: never quantized."""
    return node.op == "call_module" and str(node.target).startswith("_guards")


def is_observer_node(model: GraphModule, node: Node) -> bool:
    return node.op == "call_module" and str(node.target).startswith(OBSERVER_PREFIX)


def fetch_attr(model: torch.nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def delete_attr(model: torch.nn.Module, target: str) -> None:
    *path, leaf = target.split(".")
    owner = fetch_attr(model, ".".join(path)) if path else model
    if hasattr(owner, leaf):
        delattr(owner, leaf)


def unique_attr_name(model: torch.nn.Module, prefix: str) -> str:
    i = 0
    while hasattr(model, f"{prefix}{i}"):
        i += 1
    return f"{prefix}{i}"


def iter_call_functions(model: GraphModule, targets: Iterable[Any]) -> Iterator[Node]:
    wanted = set(targets)
    for n in list(model.graph.nodes):
        if n.op == "call_function" and n.target in wanted:
            yield n


def module_stack(node: Node) -> list[tuple[str, str]]:
    """``(qualified name, type name)`` of the modules that produced ``node``, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for value in stack.values():
        path, typ = value[0], value[1]
        if not isinstance(typ, str):
            typ = f"{typ.__module__}.{typ.__qualname__}"
        out.append((path, typ))
    return out


def type_name(cls: type) -> set[str]:
    """Names a module class may appear under in ``nn_module_stack``."""
    return {f"{cls.__module__}.{cls.__qualname__}", f"{cls.__module__}.{cls.__name__}"}


def copy_meta(src: Node, dst: Node, skip: tuple[str, ...] = ()) -> None:
    """Carry ``src``'s metadata over to a node that replaces it (shallow-copies each value)."""
    for k, v in src.meta.items():
        if k not in skip:
            dst.meta[k] = copy.copy(v)


def erase_dead(model: GraphModule, roots: Iterable[Node]) -> None:
    """Erase ``roots`` and then their inputs, as long as they have no users left and are pure.

    Only get_attr and side-effect-free call_function nodes are removed (never placeholders or
    in-place ops such as a BatchNorm's ``num_batches_tracked.add_``); attributes no longer read
    by any get_attr are deleted from the module so a re-export does not carry dead weights.
    """
    stack = list(roots)
    dropped_targets: set[str] = set()
    erased: set[Node] = set()
    while stack:
        n = stack.pop()
        if n in erased or getattr(n, "_erased", False):
            continue
        if n.graph is not model.graph or n.users or n.op not in ("get_attr", "call_function"):
            continue
        if n.op == "call_function" and not is_pure(n):
            continue
        inputs = node_inputs(n)
        if n.op == "get_attr":
            dropped_targets.add(str(n.target))
        model.graph.erase_node(n)
        erased.add(n)
        stack.extend(inputs)
    still_used = {str(n.target) for n in model.graph.nodes if n.op == "get_attr"}
    for target in dropped_targets - still_used:
        delete_attr(model, target)


def is_pure(node: Node) -> bool:
    """True for functional ops (aten overloads without mutated args, getitem)."""
    import operator

    if node.target is operator.getitem:
        return True
    if not isinstance(node.target, torch._ops.OpOverload):
        return False
    if node.target.namespace not in _SIDE_EFFECT_FREE_NAMESPACES:
        return False
    return not node.target._schema.is_mutable


def get_debug_handle_location() -> tuple[str, str]:
    """Where the numeric debugger stores a node's debug handle: ``meta[custom][key]``.

    Read from :mod:`harness.quant.pt2e.numeric_debugger` when it defines the keys (imported lazily:
    that module imports this package), else the documented defaults.
    """
    try:
        from harness.quant.pt2e import numeric_debugger as nd
    except ImportError:
        return "custom", "numeric_debug_handle"
    return getattr(nd, "CUSTOM_KEY", "custom"), getattr(
        nd, "NUMERIC_DEBUG_HANDLE_KEY", "numeric_debug_handle"
    )


def copy_debug_handle(src: Node, dst: Node) -> None:
    """Give ``dst`` the numeric debug handle of ``src`` (if it has one)."""
    custom_key, handle_key = get_debug_handle_location()
    custom = src.meta.get(custom_key)
    if isinstance(custom, dict) and handle_key in custom:
        dst.meta.setdefault(custom_key, {})
        dst.meta[custom_key] = dict(dst.meta[custom_key])
        dst.meta[custom_key][handle_key] = custom[handle_key]


def get_debug_handle(node: Node) -> Any | None:
    custom_key, handle_key = get_debug_handle_location()
    custom = node.meta.get(custom_key)
    return custom.get(handle_key) if isinstance(custom, dict) else None
