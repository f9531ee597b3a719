"""Numeric debugger: per-op debug handles on exported graphs, output loggers, SQNR comparison.

Debug handles
-------------
:func:`generate_numeric_debug_handle` gives every *handled node* of an exported graph a unique
positive integer, stored at ``node.meta[CUSTOM_KEY][NUMERIC_DEBUG_HANDLE_KEY]`` (i.e.
``node.meta["custom"]["numeric_debug_handle"]``). ``meta["custom"]`` is the one metadata slot
torch.export carries through its own transformations, which is what lets a handle identify "the same
op" in the float graph, the prepared graph, the converted graph and a reloaded ``.pt2``.
Measured on torch 2.6, 2.13 and 2.14 (tests/pt2e/test_numeric_debug_handle.py pass on each):

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
* torch 2.13 and 2.14 (not 2.6) also write their own ``_torchdynamo_disable*`` keys into
  ``meta["custom"]`` of nodes they re-trace, so the handle is always read by its key, and a
  ``custom`` dict is replaced rather than updated (torch may share one dict between nodes).

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

import copy
import json
import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.fx import GraphModule, Node

__all__ = [
    "CUSTOM_KEY",
    "DEFAULT_DIVERGENCE_SQNR_DB",
    "NUMERIC_DEBUG_HANDLE_KEY",
    "Divergence",
    "Intermediates",
    "NodeAccuracySummary",
    "NodeOutputs",
    "OutputLogger",
    "QuantizationComparisonResult",
    "collect_numeric_debug_handles",
    "compare_results",
    "compute_intermediates",
    "cosine_similarity",
    "describe_first_divergence",
    "extract_results_from_loggers",
    "find_first_divergence",
    "first_divergent_op",
    "format_comparison",
    "generate_numeric_debug_handle",
    "get_numeric_debug_handle",
    "is_handled_node",
    "iter_graph_modules",
    "l2_error",
    "op_name",
    "prepare_for_propagation_comparison",
    "program_intermediates",
    "set_numeric_debug_handle",
    "sqnr",
]

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
        try:
            sub = owner.get_submodule(target) if owner is not None else None
        except AttributeError:
            sub = None
        return not isinstance(sub, OutputLogger)
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


def _has_tensor(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    return isinstance(x, (list, tuple)) and any(_has_tensor(v) for v in x)


def _snapshot(x: Any) -> Any:
    # A copy, so later in-place ops in the graph cannot rewrite what was recorded.
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (list, tuple)):
        return [_snapshot(v) for v in x]
    return x


# --------------------------------------------------------------------------------------------
# Loggers
# --------------------------------------------------------------------------------------------


def op_name(node: Node) -> str:
    """A short, stable name of what ``node`` computes: ``aten.conv1d``, ``higher_order.cond``,
    ``Tensor.view`` (call_method), or the class name of a called submodule."""
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return str(target.overloadpacket)
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order.{target.name()}"
    if node.op == "call_method":
        return f"Tensor.{target}"
    if node.op == "call_module":
        owner = node.graph.owning_module
        sub = owner.get_submodule(str(target)) if owner is not None else None
        return type(sub).__name__ if sub is not None else str(target)
    return getattr(target, "__qualname__", str(target))


def _no_handles_error(what: str) -> ValueError:
    return ValueError(
        f"{what} has no numeric debug handles (node.meta[{CUSTOM_KEY!r}]"
        f"[{NUMERIC_DEBUG_HANDLE_KEY!r}]): call generate_numeric_debug_handle(ep) on the "
        "exported program right after torch.export.export, before ep.module() / prepare_pt2e"
    )


def _source_op_names(gm: GraphModule) -> dict[int, str]:
    """handle -> op name of the *first* node carrying it (the original op, not a later dequantize)."""
    names: dict[int, str] = {}
    for node in gm.graph.nodes:
        h = get_numeric_debug_handle(node)
        if h is not None and is_handled_node(node) and h not in names:
            names[h] = op_name(node)
    return names


def _attr_name(gm: GraphModule, base: str) -> str:
    i = 0
    while hasattr(gm, f"{base}_{i}"):
        i += 1
    return f"{base}_{i}"


def prepare_for_propagation_comparison(model: GraphModule | ExportedProgram) -> GraphModule:
    """A copy of ``model`` with an :class:`OutputLogger` after every handled node of the top-level
    graph that carries a debug handle; the copy computes exactly what ``model`` computes.

    Nodes inside control-flow branches keep their handles but get no logger (a branch's values
    are not observable from outside the branch that ran). Raises ``ValueError`` when no node has
    a handle: a comparison over such a graph would silently be empty.
    """
    from harness.compat import expected_torch_deprecations

    gm = model.module() if isinstance(model, ExportedProgram) else _graph_module(model)
    with expected_torch_deprecations():  # deepcopy of export's pytree specs warns on torch 2.13
        gm = copy.deepcopy(gm)
    targets = [n for n in gm.graph.nodes if is_handled_node(n) and get_numeric_debug_handle(n)]
    if not targets:
        raise _no_handles_error(
            f"{type(model).__name__} passed to prepare_for_propagation_comparison"
        )
    source_ops = _source_op_names(gm)
    for node in targets:
        handle = get_numeric_debug_handle(node)
        assert handle is not None
        name = _attr_name(gm, f"{node.name}_logger")
        gm.add_submodule(
            name,
            OutputLogger(handle, node.name, source_ops[handle], node.meta.get("nn_module_stack")),
        )
        with gm.graph.inserting_after(node):
            logger_node = gm.graph.call_module(name, (node,))
        # The logger's output replaces the node's everywhere except in the logger itself.
        node.replace_all_uses_with(
            logger_node, delete_user_cb=lambda u, ln=logger_node: u is not ln
        )
    gm.graph.lint()
    gm.recompile()
    return gm


@dataclass(frozen=True)
class NodeOutputs:
    """What the loggers recorded for one handle: one entry per forward call, each a tensor or a
    list of tensors. ``node_name`` is the node whose value was recorded (after convert, the
    dequantize that took over the handle), ``op_name`` the op that first carried the handle."""

    handle: int
    node_name: str
    op_name: str
    module_stack: object | None
    outputs: list[Any]


def extract_results_from_loggers(model: GraphModule) -> dict[int, NodeOutputs]:
    """``handle -> NodeOutputs`` from a model made by :func:`prepare_for_propagation_comparison`
    and run at least once, in the graph's topological order.

    When several nodes carry one handle (an op and its output observer or dequantize), the last
    one in topological order represents the handle: its value is what the rest of the graph sees.
    """
    loggers: list[OutputLogger] = []
    for node in _graph_module(model).graph.nodes:
        if node.op == "call_module":
            sub = model.get_submodule(str(node.target))
            if isinstance(sub, OutputLogger):
                loggers.append(sub)
    if not loggers:
        raise ValueError(
            "model has no OutputLogger: pass the model returned by "
            "prepare_for_propagation_comparison (and run it on inputs first)"
        )
    results: dict[int, NodeOutputs] = {}
    for lg in loggers:
        # Ops whose output holds no tensor (``_assert_tensor_metadata`` returns None, size
        # queries return ints) have nothing to compare and are left out.
        if lg.stats and all(_has_tensor(record) for record in lg.stats):
            results[lg.debug_handle] = NodeOutputs(
                lg.debug_handle, lg.node_name, lg.op_name, lg.nn_module_stack, list(lg.stats)
            )
    if not results:
        raise ValueError("the loggers recorded nothing: run the logged model on inputs first")
    first_seen = {lg.debug_handle: i for i, lg in reversed(list(enumerate(loggers)))}
    return dict(sorted(results.items(), key=lambda kv: first_seen[kv[0]]))


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------


def _as_float64(x: Any, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: expected a tensor, got {type(x).__qualname__}")
    return x.detach().to(torch.float64).reshape(-1)


def _norms(ref: torch.Tensor, actual: torch.Tensor) -> tuple[float, float]:
    """``(||ref||_2, ||ref - actual||_2)`` in float64. Elements equal on both sides (the same
    inf, or NaN on both) add no noise; a NaN or inf on one side only makes the noise +inf; the
    signal counts the finite elements of ``ref``."""
    r, a = _as_float64(ref, "ref"), _as_float64(actual, "actual")
    same = (r == a) | (torch.isnan(r) & torch.isnan(a))
    diff = torch.where(same, torch.zeros_like(r), r - a)
    noise = torch.linalg.vector_norm(diff).item()
    if math.isnan(noise):
        noise = math.inf
    signal = torch.linalg.vector_norm(r[torch.isfinite(r)]).item()
    return signal, noise


def sqnr(ref: torch.Tensor, actual: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB, the reference being the signal:

        SQNR = 20 * log10(||ref||_2 / ||ref - actual||_2)

    +inf when the tensors are equal; -inf when ``ref`` is all zeros and ``actual`` is not, or
    when one side has a NaN or inf the other lacks. Each +6.02 dB is one more bit of agreement;
    int8 per-tensor quantization of a well-scaled tensor gives roughly 40 dB.
    """
    signal, noise = _norms(ref, actual)
    if noise == 0.0:
        return math.inf
    if signal == 0.0 or math.isinf(noise):
        return -math.inf
    return 20.0 * math.log10(signal / noise)


def l2_error(ref: torch.Tensor, actual: torch.Tensor) -> float:
    """Relative L2 error ``||ref - actual||_2 / ||ref||_2`` (0 when equal; +inf when ``ref`` is all
    zeros and ``actual`` is not, or on a one-sided NaN/inf). ``SQNR = -20 * log10(l2_error)``."""
    signal, noise = _norms(ref, actual)
    if noise == 0.0:
        return 0.0
    return math.inf if signal == 0.0 or math.isinf(noise) else noise / signal


def cosine_similarity(ref: torch.Tensor, actual: torch.Tensor) -> float:
    """``<ref, actual> / (||ref||_2 * ||actual||_2)`` over the flattened tensors; 1.0 when both
    are all zeros, 0.0 when exactly one is."""
    r, a = _as_float64(ref, "ref"), _as_float64(actual, "actual")
    nr, na = torch.linalg.vector_norm(r).item(), torch.linalg.vector_norm(a).item()
    if nr == 0.0 and na == 0.0:
        return 1.0
    if nr == 0.0 or na == 0.0:
        return 0.0
    return float(torch.dot(r, a).item() / (nr * na))


def _check_same_structure(ref: Any, actual: Any, where: str) -> None:
    if isinstance(ref, torch.Tensor) and isinstance(actual, torch.Tensor):
        if ref.shape != actual.shape:
            raise ValueError(
                f"{where}: shapes differ, ref {tuple(ref.shape)} vs actual {tuple(actual.shape)}"
            )
        return
    if isinstance(ref, (list, tuple)) and isinstance(actual, (list, tuple)):
        if len(ref) != len(actual):
            raise ValueError(f"{where}: {len(ref)} ref outputs vs {len(actual)} actual outputs")
        for i, (r, a) in enumerate(zip(ref, actual, strict=True)):
            _check_same_structure(r, a, f"{where}[{i}]")
        return
    if not isinstance(ref, (torch.Tensor, list, tuple)) and not isinstance(
        actual, (torch.Tensor, list, tuple)
    ):
        # non-tensor elements (None, ints) carry no numerics but must still agree
        if ref != actual:
            raise ValueError(f"{where}: ref {ref!r} vs actual {actual!r}")
        return
    raise TypeError(
        f"{where}: cannot compare {type(ref).__qualname__} with {type(actual).__qualname__}"
    )


def _apply(fn: Callable[[torch.Tensor, torch.Tensor], float], ref: Any, actual: Any) -> Any:
    if isinstance(ref, torch.Tensor):
        return fn(ref, actual)
    return [_apply(fn, r, a) for r, a in zip(ref, actual, strict=True) if _is_tensor_tree(r)]


def _is_tensor_tree(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    return isinstance(x, (list, tuple)) and all(_is_tensor_tree(v) for v in x)


@dataclass(frozen=True)
class QuantizationComparisonResult:
    """One recorded output of one handle, reference vs actual. For a list/tuple output each
    metric is a list with one value per element (non-tensor elements are skipped)."""

    ref: Any
    actual: Any

    @property
    def sqnr(self) -> Any:
        return _apply(sqnr, self.ref, self.actual)

    @property
    def l2_error(self) -> Any:
        return _apply(l2_error, self.ref, self.actual)

    @property
    def cosine_similarity(self) -> Any:
        return _apply(cosine_similarity, self.ref, self.actual)

    @property
    def min_sqnr(self) -> float:
        """The worst SQNR over the elements (the SQNR itself for a tensor output)."""
        return min(_flatten(self.sqnr), default=math.inf)


def _flatten(x: Any) -> list[float]:
    if isinstance(x, list):
        return [v for item in x for v in _flatten(item)]
    return [x]


@dataclass(frozen=True)
class NodeAccuracySummary:
    """Comparison of one handle: one :class:`QuantizationComparisonResult` per forward call."""

    handle: int
    op_name: str
    ref_node_name: str
    actual_node_name: str
    ref_module_stack: object | None
    actual_module_stack: object | None
    results: list[QuantizationComparisonResult]


def compare_results(
    ref_results: dict[int, NodeOutputs], actual_results: dict[int, NodeOutputs]
) -> dict[int, NodeAccuracySummary]:
    """Per handle present in both, SQNR / L2 error / cosine similarity of actual against ref.

    Handles present on one side only (nodes the other graph does not have) are left out; an
    empty side, or two sides with no handle in common, is an error rather than an empty result.
    """
    if not ref_results:
        raise _no_handles_error("ref_results")
    if not actual_results:
        raise _no_handles_error("actual_results")
    common = [h for h in ref_results if h in actual_results]
    if not common:
        raise ValueError(
            f"ref and actual results share no debug handle (ref {sorted(ref_results)}, actual "
            f"{sorted(actual_results)}): generate the handles once on the exported float model, "
            "then derive both models from it"
        )
    out: dict[int, NodeAccuracySummary] = {}
    for h in common:
        ref, act = ref_results[h], actual_results[h]
        if len(ref.outputs) != len(act.outputs):
            raise ValueError(
                f"handle {h} ({ref.op_name}): ref recorded {len(ref.outputs)} calls, actual "
                f"{len(act.outputs)}; run both models on the same inputs"
            )
        for i, (r, a) in enumerate(zip(ref.outputs, act.outputs, strict=True)):
            _check_same_structure(r, a, f"handle {h} ({ref.op_name}), call {i}")
        out[h] = NodeAccuracySummary(
            handle=h,
            op_name=ref.op_name,
            ref_node_name=ref.node_name,
            actual_node_name=act.node_name,
            ref_module_stack=ref.module_stack,
            actual_module_stack=act.module_stack,
            results=[
                QuantizationComparisonResult(ref=r, actual=a)
                for r, a in zip(ref.outputs, act.outputs, strict=True)
            ],
        )
    return out


def _fmt(value: Any, spec: str) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v, spec) for v in value) + "]"
    return format(value, spec)


def format_comparison(comparison: Mapping[int, NodeAccuracySummary], call: int = -1) -> str:
    """A text table of :func:`compare_results` (one row per handle, for forward call ``call``):
    handle, op, compared nodes, SQNR (dB), relative L2 error, cosine similarity."""
    header = ("handle", "op", "ref node", "actual node", "SQNR dB", "L2 err", "cosine")
    rows = [header]
    for h, node in comparison.items():
        r = node.results[call]
        rows.append(
            (
                str(h),
                node.op_name,
                node.ref_node_name,
                node.actual_node_name,
                _fmt(r.sqnr, ".1f"),
                _fmt(r.l2_error, ".2e"),
                _fmt(r.cosine_similarity, ".6f"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


# --------------------------------------------------------------------------------------------
# Golden intermediates and "first divergent op"
# --------------------------------------------------------------------------------------------

#: Below this SQNR (dB) an intermediate counts as divergent when today's run is compared with a
#: golden's. Reproducing the same quantized computation is normally exact (+inf dB); one int8
#: rounding flip in a tiny tensor of n elements of typical magnitude ~30 steps costs about
#: 20*log10(30*sqrt(n)) >= 30 dB + 10*log10(n) dB, i.e. ~44 dB for n = 27, so 40 dB separates
#: rounding noise from a real change (a wrong weight, scale or op) on the harness's tiny cases.
DEFAULT_DIVERGENCE_SQNR_DB = 40.0

# Key of the JSON entry that describes the intermediates in a safetensors metadata dict.
_FLAT_METADATA_KEY = "qbc.numeric_debug.intermediates"


@dataclass
class Intermediates:
    """Per-handle intermediate outputs of one model run, in topological order.

    ``outputs[h]`` is a tensor, or a list of tensors for an op with several outputs;
    ``ops[h]`` the op that carries handle ``h`` (e.g. ``aten.conv1d``).
    """

    outputs: dict[int, Any]
    ops: dict[int, str]

    @property
    def order(self) -> list[int]:
        return list(self.outputs)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that ``torch.save`` writes and ``torch.load(..., weights_only=True)`` reads
        back (strings, ints, lists and tensors only): ``{"format": 1, "order": [...],
        "ops": {"<handle>": name}, "outputs": {"<handle>": tensor | [tensors]}}``."""
        return {
            "format": 1,
            "order": self.order,
            "ops": {str(h): name for h, name in self.ops.items()},
            "outputs": {
                str(h): (v.detach().clone() if isinstance(v, torch.Tensor) else list(v))
                for h, v in self.outputs.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Intermediates:
        """Inverse of :meth:`to_dict`."""
        if data.get("format") != 1 or "outputs" not in data:
            raise ValueError("not an Intermediates.to_dict() mapping (no 'format': 1 / 'outputs')")
        outputs = data["outputs"]
        order = [int(h) for h in data.get("order", sorted(outputs, key=int))]
        return cls(
            outputs={h: outputs[str(h)] for h in order},
            ops={int(h): name for h, name in data.get("ops", {}).items()},
        )

    @classmethod
    def coerce(cls, data: Intermediates | Mapping[Any, Any]) -> Intermediates:
        """Accept an Intermediates, a :meth:`to_dict` mapping, or a bare ``{handle: tensor}``
        (handles as ints or strings; op names then unknown, order ascending)."""
        if isinstance(data, Intermediates):
            return data
        if "outputs" in data and "format" in data:
            return cls.from_dict(data)
        outputs = {int(h): v for h, v in sorted(data.items(), key=lambda kv: int(kv[0]))}
        return cls(outputs=outputs, ops={})

    def to_flat(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """``(tensors, metadata)`` for ``safetensors.torch.save_file(tensors, path, metadata)``.

        Tensor keys are ``"<handle>"``, or ``"<handle>.<i>"`` for the i-th element of a list
        output; the metadata holds the topological order, the op names and each list's length.
        """
        tensors: dict[str, torch.Tensor] = {}
        lengths: dict[str, int] = {}
        for h, value in self.outputs.items():
            if isinstance(value, torch.Tensor):
                tensors[str(h)] = value.detach().contiguous().clone()
            else:
                lengths[str(h)] = len(value)
                for i, v in enumerate(value):
                    tensors[f"{h}.{i}"] = v.detach().contiguous().clone()
        meta = {
            "order": self.order,
            "ops": {str(h): name for h, name in self.ops.items()},
            "list_lengths": lengths,
        }
        return tensors, {_FLAT_METADATA_KEY: json.dumps(meta, sort_keys=True)}

    @classmethod
    def from_flat(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Intermediates:
        """Inverse of :meth:`to_flat`."""
        if _FLAT_METADATA_KEY not in metadata:
            raise ValueError(
                f"metadata has no {_FLAT_METADATA_KEY!r} entry: not written by Intermediates.to_flat"
            )
        meta = json.loads(metadata[_FLAT_METADATA_KEY])
        lengths = meta["list_lengths"]
        outputs: dict[int, Any] = {}
        for h in meta["order"]:
            key = str(h)
            if key in lengths:
                outputs[h] = [tensors[f"{h}.{i}"] for i in range(lengths[key])]
            else:
                outputs[h] = tensors[key]
        return cls(outputs=outputs, ops={int(h): name for h, name in meta["ops"].items()})


def _tensors_only(value: Any) -> Any:
    # extract_results_from_loggers only returns records holding a tensor
    if isinstance(value, torch.Tensor):
        return value
    return [v for v in value if isinstance(v, torch.Tensor)]


def compute_intermediates(
    model: GraphModule | ExportedProgram, example_inputs: tuple[Any, ...]
) -> Intermediates:
    """Run ``model`` once on ``example_inputs`` and return every handle's output.

    ``model`` must carry debug handles (from :func:`generate_numeric_debug_handle`, run on the
    exported float program before quantization, so that the float graph and the quantized graph
    derived from it share handles). ``model`` itself is not modified.
    """
    logged = prepare_for_propagation_comparison(model)
    with torch.no_grad():
        logged(*example_inputs)
    results = extract_results_from_loggers(logged)
    return Intermediates(
        outputs={h: _tensors_only(r.outputs[-1]) for h, r in results.items()},
        ops={h: r.op_name for h, r in results.items()},
    )


@dataclass(frozen=True)
class Divergence:
    """The first handle whose intermediate differs from the golden's beyond the threshold."""

    handle: int
    op_name: str
    sqnr_db: float
    detail: str = ""

    def __str__(self) -> str:
        text = (
            f"first divergent op: {self.op_name}, handle {self.handle}, SQNR {self.sqnr_db:.1f} dB"
        )
        return f"{text} ({self.detail})" if self.detail else text


def _worst_sqnr(golden: Any, today: Any) -> tuple[float, str]:
    """(min SQNR over elements, why it is -inf if the values cannot even be compared)."""
    try:
        _check_same_structure(golden, today, "output")
    except (TypeError, ValueError) as e:
        return -math.inf, str(e)
    return min(_flatten(_apply(sqnr, golden, today)), default=math.inf), ""


def find_first_divergence(
    golden_outputs: Mapping[int, Any],
    today_outputs: Mapping[int, Any],
    op_names: Mapping[int, str] | None = None,
    sqnr_threshold_db: float = DEFAULT_DIVERGENCE_SQNR_DB,
    order: Sequence[int] | None = None,
) -> Divergence | None:
    """The first handle, in topological order, whose SQNR of today's output against the golden's
    (the golden is the signal) is below ``sqnr_threshold_db``; None if every handle agrees.

    ``order`` defaults to ascending handles, which is the topological order of the float graph
    the handles were generated on. A handle the golden has but today's run lacks is divergent
    (SQNR -inf, "missing today"), as is one whose shapes differ. Handles only today has are new
    nodes with nothing to compare against and are skipped. For a list output the worst element
    counts.
    """
    if not golden_outputs:
        raise _no_handles_error("the golden's intermediates")
    if not today_outputs:
        raise _no_handles_error("today's intermediates")
    names = dict(op_names or {})
    for h in order if order is not None else sorted(golden_outputs):
        if h not in golden_outputs:
            continue
        name = names.get(h, "?")
        if h not in today_outputs:
            return Divergence(h, name, -math.inf, "missing from today's graph")
        value, detail = _worst_sqnr(golden_outputs[h], today_outputs[h])
        if math.isnan(value) or value < sqnr_threshold_db:
            return Divergence(h, name, value, detail)
    return None


def first_divergent_op(
    golden: Intermediates | Mapping[Any, Any],
    today: Intermediates | Mapping[Any, Any],
    sqnr_threshold_db: float = DEFAULT_DIVERGENCE_SQNR_DB,
) -> Divergence | None:
    """:func:`find_first_divergence` over two sets of intermediates (each an
    :class:`Intermediates`, its :meth:`~Intermediates.to_dict` form, or ``{handle: tensor}``), in
    the golden's order."""
    golden, today = Intermediates.coerce(golden), Intermediates.coerce(today)
    return find_first_divergence(
        golden.outputs,
        today.outputs,
        op_names={**today.ops, **golden.ops},
        sqnr_threshold_db=sqnr_threshold_db,
        order=golden.order,
    )


# --------------------------------------------------------------------------------------------
# Harness hooks (generator and runner; see harness/formats/exported.py and harness/verify.py)
# --------------------------------------------------------------------------------------------


def _has_handles(gm: GraphModule) -> bool:
    return any(get_numeric_debug_handle(n) is not None for n in gm.graph.nodes)


def program_intermediates(
    model: ExportedProgram | GraphModule, example_inputs: tuple[Any, ...]
) -> dict[str, Any]:
    """Per-handle intermediate outputs of an exported model, as a ``torch.save``-able dict
    (:meth:`Intermediates.to_dict`), for the generator to store beside an exported golden and for
    the runner to recompute from a reloaded one.

    Handles should come from the float graph (generated before ``prepare_pt2e``), so a handle
    names the float op. A graph without any handle gets handles generated on a copy: that is
    deterministic (graph order), so the generator and the runner agree, but every quantize and
    dequantize then has its own handle.
    """
    gm = model.module() if isinstance(model, ExportedProgram) else _graph_module(model)
    if not _has_handles(gm):
        from harness.compat import expected_torch_deprecations

        with expected_torch_deprecations():
            gm = copy.deepcopy(gm)
        generate_numeric_debug_handle(gm)
    return compute_intermediates(gm, example_inputs).to_dict()


def describe_first_divergence(
    stored: Intermediates | Mapping[Any, Any],
    today: Intermediates | Mapping[Any, Any],
    sqnr_threshold_db: float = DEFAULT_DIVERGENCE_SQNR_DB,
) -> str | None:
    """The runner's one-line diagnosis: ``"first divergent op: aten.conv1d, handle 3, SQNR 12.1
    dB"``, or None when every stored intermediate is reproduced within ``sqnr_threshold_db``."""
    found = first_divergent_op(stored, today, sqnr_threshold_db)
    return str(found) if found is not None else None
