"""Replace observers by ``quantized_decomposed`` quantize / dequantize ops.

For an observer with scale ``s`` and zero point ``z`` on a value ``x``, convert emits::

    static, per tensor:   q = quantize_per_tensor(x, s, z, qmin, qmax, dtype)
                          y = dequantize_per_tensor(q, s, z, qmin, qmax, dtype)
    static, per channel:  the ``*_per_channel`` pair, ``s``/``z`` stored as buffers
    dynamic:              s, z = choose_qparams(x, qmin, qmax, eps, dtype) at run time, then the
                          ``.tensor`` overloads of the pair

so the graph stays float-in/float-out ("reference" representation) and backends pattern-match
``dq -> op -> q`` into integer kernels. ``y`` equals ``x`` rounded to the quantization grid:
``y = (clamp(round(x / s) + z, qmin, qmax) - z) * s``.

An observer that never saw data (no calibration pass, or a branch calibration never took) has
only the neutral qparams ``s = 1.0, z = 0``: every weight and activation it guards would round
to whole numbers. Convert still converts, but warns (:class:`UncalibratedObserverWarning`)
naming each such observer and the value it guards.
"""

from __future__ import annotations

import operator
import warnings

import torch
from torch.fx import GraphModule, Node

from harness.quant.pt2e.graph_utils import (
    copy_debug_handle,
    copy_meta,
    fetch_attr,
    is_observer_node,
    unique_attr_name,
)
from harness.quant.pt2e.observer_factory import QuantInfo, quant_info

qd = torch.ops.quantized_decomposed


class UncalibratedObserverWarning(UserWarning):
    """convert_pt2e met observers that never observed anything (see the module docstring)."""


def never_observed(module: torch.nn.Module) -> bool:
    """True when ``module`` (an observer, or a fake-quant around one) derives its qparams from
    running statistics and has not recorded any: min/max still ``(+inf, -inf)``, or empty
    per-channel buffers. Fixed, derived and placeholder observers have no statistics to miss."""
    obs = getattr(module, "activation_post_process", module)
    min_val, max_val = getattr(obs, "min_val", None), getattr(obs, "max_val", None)
    if not isinstance(min_val, torch.Tensor) or not isinstance(max_val, torch.Tensor):
        return False
    if min_val.numel() == 0 or max_val.numel() == 0:
        return True
    return bool((min_val == float("inf")).all()) and bool((max_val == float("-inf")).all())


def _guarded_value(node: Node) -> str:
    x = node.args[0]
    users = [u.name for u in node.users]
    source = f"'{x.name}'" if isinstance(x, Node) else repr(x)
    return f"{source} -> {', '.join(repr(u) for u in users) or 'output'}"


def _buffer(model: GraphModule, prefix: str, value: torch.Tensor) -> str:
    name = unique_attr_name(model, prefix)
    model.register_buffer(name, value.detach().clone())
    return name


def _static(
    model: GraphModule, node: Node, x: Node, module: torch.nn.Module, info: QuantInfo
) -> Node:
    graph = model.graph
    scale, zero_point = module.calculate_qparams()
    scale = torch.as_tensor(scale).detach()
    zero_point = torch.as_tensor(zero_point).detach()
    common = (info.quant_min, info.quant_max, info.dtype)
    with graph.inserting_before(node):
        if info.ch_axis is not None:
            s = graph.get_attr(_buffer(model, "_scale_", scale.to(torch.float32)))
            z = graph.get_attr(_buffer(model, "_zero_point_", zero_point))
            q = graph.call_function(
                qd.quantize_per_channel.default, (x, s, z, info.ch_axis, *common)
            )
            dq = graph.call_function(
                qd.dequantize_per_channel.default, (q, s, z, info.ch_axis, *common)
            )
        else:
            s_f, z_i = float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0])
            q = graph.call_function(qd.quantize_per_tensor.default, (x, s_f, z_i, *common))
            dq = graph.call_function(qd.dequantize_per_tensor.default, (q, s_f, z_i, *common))
    return _finish(node, q, dq)


def _dynamic(model: GraphModule, node: Node, x: Node, info: QuantInfo) -> Node:
    graph = model.graph
    choose = (
        qd.choose_qparams_symmetric.tensor
        if info.qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric)
        else qd.choose_qparams.tensor
    )
    common = (info.quant_min, info.quant_max, info.dtype)
    with graph.inserting_before(node):
        qparams = graph.call_function(
            choose, (x, info.quant_min, info.quant_max, info.eps, info.dtype)
        )
        s = graph.call_function(operator.getitem, (qparams, 0))
        z = graph.call_function(operator.getitem, (qparams, 1))
        q = graph.call_function(qd.quantize_per_tensor.tensor, (x, s, z, *common))
        dq = graph.call_function(qd.dequantize_per_tensor.tensor, (q, s, z, *common))
    return _finish(node, q, dq)


def _finish(node: Node, q: Node, dq: Node) -> Node:
    # The dequantized value stands where the observer stood: same float value metadata, same
    # provenance, and the numeric debug handle of the node the observer watched.
    copy_meta(node, dq)
    for key in ("nn_module_stack", "stack_trace"):
        if key in node.meta:
            q.meta[key] = node.meta[key]
    copy_debug_handle(node, dq)
    node.replace_all_uses_with(dq)
    node.graph.erase_node(node)
    _one_dequantize_per_user(dq)
    return dq


def _one_dequantize_per_user(dq: Node) -> None:
    """Give every consumer its own copy of ``dq``: backends lower ``dq -> op -> q`` patterns
    one op at a time, and a dequantize shared by two ops would belong to neither pattern."""
    graph = dq.graph
    for user in list(dq.users)[1:]:
        with graph.inserting_before(user):
            copy = graph.node_copy(dq)
        copy.meta = dict(dq.meta)
        user.replace_input_with(dq, copy)


def replace_observers(model: GraphModule) -> GraphModule:
    """Turn every observer call into q/dq ops (or drop it if it keeps the value in float)."""
    graph = model.graph
    used: set[str] = set()
    uncalibrated: dict[str, list[str]] = {}
    for node in list(graph.nodes):
        if not is_observer_node(model, node):
            continue
        target = str(node.target)
        used.add(target)
        module = fetch_attr(model, target)
        x = node.args[0]
        assert isinstance(x, Node)
        info = quant_info(module)
        if info is not None and not info.is_dynamic and never_observed(module):
            uncalibrated.setdefault(target, []).append(_guarded_value(node))
        if info is None:
            node.replace_all_uses_with(x)
            graph.erase_node(node)
        elif info.is_dynamic:
            _dynamic(model, node, x, info)
        else:
            _static(model, node, x, module, info)
    if uncalibrated:
        listed = "; ".join(f"{name} ({', '.join(v)})" for name, v in uncalibrated.items())
        warnings.warn(
            f"convert_pt2e: {len(uncalibrated)} observer(s) never saw data, so their values are "
            f"quantized with the neutral scale 1.0 and zero point 0 (run the prepared model on "
            f"calibration data before convert_pt2e): {listed}",
            UncalibratedObserverWarning,
            stacklevel=3,
        )
    # Observer modules are not needed any more (and would not export).
    for name, _ in list(model.named_children()):
        if name.startswith("activation_post_process_"):
            delattr(model, name)
    graph.lint()
    model.recompile()
    return model
