"""Insert observers (or fake-quant modules) where the annotations ask for them.

Every annotated *point* is either a node output or an input edge ``(producer, consumer)``. Points
that must share qparams are grouped with a union-find:

* explicitly, through :class:`SharedQuantizationSpec`;
* implicitly, when an input edge wants exactly the spec its producer's output already has (the
  consumer then reads the producer's observed output instead of observing the value twice).

Each group gets one module (named ``activation_post_process_<i>``), so shared points end up with
identical qparams. Output observers are inserted right after their node and take over all of its
users; edge observers are inserted before their consumer and feed that consumer only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node

from harness.quant.pt2e.graph_utils import (
    OBSERVER_PREFIX,
    copy_debug_handle,
    is_guard,
    node_inputs,
    unique_attr_name,
)
from harness.quant.pt2e.observer_factory import create_derived_observer, create_observer
from harness.quant.pt2e.quantizer import (
    ANNOTATION_KEY,
    DerivedQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)

Point = Node | tuple[Node, Node]


def describe(point: Any) -> str:
    if isinstance(point, Node):
        return f"output of node '{point.name}'"
    if isinstance(point, tuple) and len(point) == 2:
        a, b = point
        return f"edge '{getattr(a, 'name', a)}' -> '{getattr(b, 'name', b)}'"
    return repr(point)


def _collect(model: GraphModule) -> dict[Point, QuantizationSpecBase]:
    """Every annotated point and its spec, after checking each annotation is well-formed."""
    specs: dict[Point, QuantizationSpecBase] = {}
    for node in model.graph.nodes:
        ann = node.meta.get(ANNOTATION_KEY)
        if ann is None:
            continue
        if not isinstance(ann, QuantizationAnnotation):
            raise TypeError(
                f"node '{node.name}': meta['{ANNOTATION_KEY}'] must be a QuantizationAnnotation, "
                f"got {type(ann).__name__}"
            )
        inputs = node_inputs(node)
        for arg, spec in ann.input_qspec_map.items():
            if not isinstance(arg, Node) or arg not in inputs:
                raise ValueError(
                    f"node '{node.name}' ({node.target}): input_qspec_map annotates {arg!r}, "
                    f"which is not an input node of '{node.name}' (its input nodes are "
                    f"{[i.name for i in inputs]}); only edges from producer nodes can be "
                    "quantized"
                )
            if spec is not None:
                specs[(arg, node)] = spec
        if ann.output_qspec is not None:
            specs[node] = ann.output_qspec
    return specs


class _Groups:
    """Union-find over points; a group's root is the point whose spec is authoritative."""

    def __init__(self) -> None:
        self.parent: dict[Point, Point] = {}

    def find(self, p: Point) -> Point:
        root = p
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while p != root:  # path compression
            self.parent[p], p = root, self.parent[p]
        return root

    def attach(self, child: Point, owner: Point) -> None:
        """Make ``child``'s group part of ``owner``'s group (``owner``'s root stays root)."""
        a, b = self.find(child), self.find(owner)
        if a != b:
            self.parent[a] = b


def _group_points(
    model: GraphModule, specs: dict[Point, QuantizationSpecBase]
) -> tuple[_Groups, dict[Point, QuantizationSpecBase]]:
    groups = _Groups()
    for point, spec in specs.items():
        if isinstance(spec, SharedQuantizationSpec):
            target = spec.edge_or_node
            if target not in specs:
                raise ValueError(
                    f"SharedQuantizationSpec of the {describe(point)} refers to the "
                    f"{describe(target)}, which has no quantization spec"
                )
            groups.attach(point, target)

    def root_spec(p: Point) -> QuantizationSpecBase:
        root = groups.find(p)
        spec = specs[root]
        if isinstance(spec, SharedQuantizationSpec):
            raise ValueError(f"SharedQuantizationSpec cycle through the {describe(p)}")
        return spec

    def shareable(a: QuantizationSpecBase, b: QuantizationSpecBase) -> bool:
        derived = isinstance(a, DerivedQuantizationSpec) or isinstance(b, DerivedQuantizationSpec)
        return not derived and a == b

    # Implicit sharing, in graph order so chains (a -> b -> c) resolve front to back: an edge
    # reuses its producer's output observer, or else the observer of an earlier edge from the
    # same producer (one quantize of a value feeding several consumers), when the specs agree.
    sibling_edges: dict[Node, list[Point]] = {}
    for node in model.graph.nodes:
        ann = node.meta.get(ANNOTATION_KEY)
        if ann is None or not ann.allow_implicit_sharing:
            continue
        for arg in ann.input_qspec_map:
            edge = (arg, node)
            if edge not in specs:
                continue
            if arg in specs:
                if shareable(root_spec(edge), root_spec(arg)):
                    groups.attach(edge, arg)
                continue
            siblings = sibling_edges.setdefault(arg, [])
            for earlier in siblings:
                if shareable(root_spec(edge), root_spec(earlier)):
                    groups.attach(edge, earlier)
                    break
            siblings.append(edge)
    roots = {groups.find(p): root_spec(p) for p in specs}
    return groups, roots


def _make_modules(
    model: GraphModule,
    groups: _Groups,
    roots: dict[Point, QuantizationSpecBase],
    is_qat: bool,
) -> dict[Point, str]:
    """One module per group, registered on ``model``; returns root -> attribute name."""
    names: dict[Point, str] = {}
    modules: dict[Point, torch.nn.Module] = {}
    derived = []
    for root, spec in roots.items():
        if isinstance(spec, DerivedQuantizationSpec):
            derived.append((root, spec))
            continue
        modules[root] = create_observer(spec, is_qat)
    for root, spec in derived:
        sources = []
        for src in spec.derived_from:
            if groups.find(src) not in modules:
                raise ValueError(
                    f"DerivedQuantizationSpec of the {describe(root)} derives from the "
                    f"{describe(src)}, which is not quantized"
                )
            sources.append(modules[groups.find(src)])
        modules[root] = create_derived_observer(spec, sources)
    for root, module in modules.items():
        name = unique_attr_name(model, OBSERVER_PREFIX)
        setattr(model, name, module)
        names[root] = name
    return names


def _first_non_placeholder(model: GraphModule) -> Node | None:
    for n in model.graph.nodes:
        if n.op not in ("placeholder", "get_attr"):
            return n
    return None


def _copy_value_meta(src: Node, dst: Node) -> None:
    for key in ("val", "tensor_meta", "nn_module_stack", "stack_trace"):
        if key in src.meta:
            dst.meta[key] = src.meta[key]


def insert_observers(model: GraphModule, is_qat: bool) -> GraphModule:
    """Insert one observer call per annotated point (shared groups share the module)."""
    specs = _collect(model)
    if not specs:
        return model
    groups, roots = _group_points(model, specs)
    names = _make_modules(model, groups, roots, is_qat)
    graph = model.graph
    observed_output: dict[Node, tuple[Point, Node]] = {}
    edge_cache: dict[tuple[Node, Point], Node] = {}

    for node in list(graph.nodes):
        ann = node.meta.get(ANNOTATION_KEY)
        if ann is not None:
            for arg in list(ann.input_qspec_map):
                edge = (arg, node)
                if edge not in specs:
                    continue
                group = groups.find(edge)
                current = arg
                if arg in observed_output:
                    out_group, out_node = observed_output[arg]
                    if out_group == group:
                        continue  # the node already reads the producer's observer
                    current = out_node
                key = (current, group)
                if key not in edge_cache:
                    with graph.inserting_before(node):
                        obs = graph.call_module(names[group], (current,))
                    _copy_value_meta(arg, obs)
                    edge_cache[key] = obs
                node.replace_input_with(current, edge_cache[key])
        if node in specs:
            group = groups.find(node)
            if node.op in ("placeholder", "get_attr"):
                anchor = _first_non_placeholder(model)
                ctx = graph.inserting_before(anchor) if anchor else graph.inserting_after(node)
            else:
                ctx = graph.inserting_after(node)
            with ctx:
                obs = graph.call_module(names[group], (node,))
            node.replace_all_uses_with(
                obs, delete_user_cb=lambda u, obs=obs: u is not obs and not is_guard(u)
            )
            _copy_value_meta(node, obs)
            copy_debug_handle(node, obs)
            observed_output[node] = (group, obs)
    graph.lint()
    model.recompile()
    return model
