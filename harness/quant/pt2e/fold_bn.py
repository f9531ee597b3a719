"""Batch norm folding into the preceding convolution.

A batch norm after a convolution is an affine map per output channel ``c``::

    bn(y)_c = gamma_c * (y_c - mean_c) / std_c + beta_c,     std_c = sqrt(var_c + eps)

so with ``s_c = gamma_c / std_c`` it folds into the convolution's weight and bias::

    W'_c = W_c * s_c,      b'_c = (b_c - mean_c) * s_c + beta_c

* PTQ (:func:`fold_conv_bn_eval`): batch norms in inference mode are folded before annotation,
  so weights are observed, quantized and executed in their folded form.
* QAT (:func:`prepare_conv_bn_qat` then :func:`fold_conv_bn_qat`): the batch norm must keep
  training on batch statistics, yet the weight that gets fake-quantized must be the folded one.
  The graph computes ``conv(x, W * s) / s + b`` (equal to ``conv(x, W) + b`` up to the
  fake-quant of ``W * s``) and feeds that to the batch norm; at convert the batch norm is
  folded for real with its running statistics.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from harness.quant.pt2e.annotators import BN_OPS, CONV_OPS, CONV_TRANSPOSE_OPS
from harness.quant.pt2e.graph_utils import (
    copy_meta,
    erase_dead,
    fetch_attr,
    is_observer_node,
    unique_attr_name,
)
from harness.quant.pt2e.quantizer import ANNOTATION_KEY

aten = torch.ops.aten
QAT_CONV_BN_KEY = "qbc_qat_conv_bn"


def _tensor(model: GraphModule, node: object) -> torch.Tensor | None:
    if node is None:
        return None
    if not isinstance(node, Node) or node.op != "get_attr":
        raise _NotFoldable
    return fetch_attr(model, str(node.target)).detach()


class _NotFoldable(Exception):
    pass


def _bn_scale_shift(
    model: GraphModule, bn: Node
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(s, mean, beta)`` of a batch norm node, with ``s = gamma / sqrt(var + eps)``."""
    gamma, beta, mean, var = (_tensor(model, a) for a in bn.args[1:5])
    eps = float(bn.args[7]) if len(bn.args) > 7 else 1e-5
    if mean is None or var is None:
        raise _NotFoldable
    scale = torch.rsqrt(var + eps)
    if gamma is not None:
        scale = gamma * scale
    if beta is None:
        beta = torch.zeros_like(mean)
    return scale, mean, beta


def _groups(conv: Node) -> int:
    """``groups`` of a conv / conv_transpose node (argument 6 of both aten schemas)."""
    groups = conv.args[6] if len(conv.args) > 6 else conv.kwargs.get("groups", 1)
    return int(groups)


def _weight_scale(s: torch.Tensor, conv: Node, weight: torch.Tensor) -> torch.Tensor:
    """The per-output-channel factor ``s`` laid out to multiply ``conv``'s weight.

    A conv weight is ``[out, in/groups, k...]``: ``s`` runs along axis 0. A transposed conv
    weight is ``[in, out/groups, k...]``: input channel ``i`` of group ``g = i // (in/groups)``
    feeds output channels ``g * out/groups + j``, so element ``[i, j]`` takes
    ``s[g * out/groups + j]`` (axis 1 when ``groups == 1``).
    """
    tail = [1] * (weight.dim() - 2)
    if conv.target in CONV_OPS:
        return s.reshape([-1, 1, *tail])
    groups = _groups(conv)
    cin, out_g = weight.shape[0], weight.shape[1]
    per_group = s.reshape(groups, 1, out_g).expand(groups, cin // groups, out_g)
    return per_group.reshape([cin, out_g, *tail])


def _set_param(model: GraphModule, prefix: str, value: torch.Tensor, like: Node) -> Node:
    name = unique_attr_name(model, prefix)
    model.register_parameter(name, torch.nn.Parameter(value, requires_grad=value.requires_grad))
    graph = model.graph
    first = next(iter(graph.nodes))
    with graph.inserting_before(first):
        node = graph.get_attr(name)
    copy_meta(like, node, skip=("val", "tensor_meta"))
    return node


def fold_conv_bn_eval(model: GraphModule) -> GraphModule:
    """Fold every inference-mode batch norm that directly follows a conv (the conv's only use)."""
    changed = False
    for bn in list(model.graph.nodes):
        if bn.op != "call_function" or bn.target not in BN_OPS or bn.args[5]:
            continue
        conv = bn.args[0]
        if (
            not isinstance(conv, Node)
            or conv.target not in CONV_OPS + CONV_TRANSPOSE_OPS
            or len(conv.users) != 1
        ):
            continue
        try:
            s, mean, beta = _bn_scale_shift(model, bn)
            weight = _tensor(model, conv.args[1])
            bias = _tensor(model, conv.args[2] if len(conv.args) > 2 else None)
        except _NotFoldable:
            continue
        assert weight is not None
        new_w = weight * _weight_scale(s, conv, weight)
        new_b = ((bias if bias is not None else torch.zeros_like(mean)) - mean) * s + beta
        old_w, old_b = conv.args[1], conv.args[2] if len(conv.args) > 2 else None
        w_node = _set_param(model, "_folded_weight", new_w, old_w)
        b_node = _set_param(model, "_folded_bias", new_b, old_b if old_b is not None else old_w)
        args = list(conv.args) + [None] * (3 - len(conv.args))
        args[1], args[2] = w_node, b_node
        conv.args = tuple(args)
        dead = [n for n in (old_w, old_b, *bn.args[1:5]) if isinstance(n, Node)]
        bn.replace_all_uses_with(conv)
        model.graph.erase_node(bn)
        erase_dead(model, dead)
        changed = True
    if changed:
        model.graph.lint()
        model.recompile()
    return model


def _call(graph: torch.fx.Graph, target: object, *args: object) -> Node:
    return graph.call_function(target, tuple(args))


def _graph_weight_scale(graph: torch.fx.Graph, s: Node, conv: Node, weight: torch.Tensor) -> Node:
    """:func:`_weight_scale` as graph nodes (QAT keeps the batch norm trainable)."""
    tail = [1] * (weight.dim() - 2)
    if conv.target in CONV_OPS:
        return _call(graph, aten.reshape.default, s, [-1, 1, *tail])
    groups = _groups(conv)
    cin, out_g = int(weight.shape[0]), int(weight.shape[1])
    per_group = _call(graph, aten.reshape.default, s, [groups, 1, out_g])
    per_group = _call(graph, aten.expand.default, per_group, [groups, cin // groups, out_g])
    return _call(graph, aten.reshape.default, per_group, [cin, out_g, *tail])


def prepare_conv_bn_qat(model: GraphModule) -> GraphModule:
    """Rewrite each annotated ``conv -> batch_norm`` into the QAT form described above, moving
    the weight annotation onto the scaled weight."""
    graph = model.graph
    changed = False
    for bn in list(graph.nodes):
        if bn.op != "call_function" or bn.target not in BN_OPS:
            continue
        conv = bn.args[0]
        if (
            not isinstance(conv, Node)
            or conv.target not in CONV_OPS + CONV_TRANSPOSE_OPS
            or len(conv.users) != 1
        ):
            continue
        ann = conv.meta.get(ANNOTATION_KEY)
        weight = conv.args[1]
        bias = conv.args[2] if len(conv.args) > 2 else None
        if ann is None or weight not in ann.input_qspec_map:
            continue
        gamma, _, _, var = bn.args[1:5]
        eps = bn.args[7] if len(bn.args) > 7 else 1e-5
        if not isinstance(var, Node) or not isinstance(weight, Node):
            continue
        if "val" not in weight.meta:
            continue
        w_val = weight.meta["val"]
        ndim = w_val.dim()
        out_shape = [1, -1] + [1] * (ndim - 2)
        with graph.inserting_before(conv):
            std = _call(graph, aten.sqrt.default, _call(graph, aten.add.Tensor, var, eps))
            s = (
                _call(graph, aten.div.Tensor, gamma, std)
                if isinstance(gamma, Node)
                else _call(graph, aten.reciprocal.default, std)
            )
            scaled_w = _call(
                graph, aten.mul.Tensor, weight, _graph_weight_scale(graph, s, conv, w_val)
            )
            s_out = _call(graph, aten.reshape.default, s, out_shape)
            b_out = (
                _call(graph, aten.reshape.default, bias, out_shape)
                if isinstance(bias, Node)
                else None
            )
        copy_meta(weight, scaled_w, skip=("val", "tensor_meta"))
        args = list(conv.args) + [None] * (3 - len(conv.args))
        args[1], args[2] = scaled_w, None
        conv.args = tuple(args)
        with graph.inserting_after(conv):
            last = _call(graph, aten.div.Tensor, conv, s_out)
        if b_out is not None:
            with graph.inserting_after(last):
                last = _call(graph, aten.add.Tensor, last, b_out)
        bn.replace_input_with(conv, last)
        spec = ann.input_qspec_map.pop(weight)
        ann.input_qspec_map[scaled_w] = spec
        # The bias is added back in float after the (unscaled) conv, so it is not quantized.
        if isinstance(bias, Node):
            ann.input_qspec_map.pop(bias, None)
        conv.meta[QAT_CONV_BN_KEY] = {
            "weight": weight.name,
            "bias": bias.name if isinstance(bias, Node) else None,
            "bn": bn.name,
            "scaled_weight": scaled_w.name,
            "unscaled": last.name,
        }
        changed = True
    if changed:
        graph.lint()
        model.recompile()
    return model


def _batch_counter_updates(model: GraphModule, bn_inputs: list[Node]) -> list[Node]:
    """Erase the ``num_batches_tracked.add_(1)`` of a batch norm that was folded away (the
    counter only serves the batch norm's momentum) and return the counters' get_attr nodes."""
    stats = [str(a.target) for a in bn_inputs if a.op == "get_attr"]
    counters = {t.rsplit(".", 1)[0] + ".num_batches_tracked" for t in stats if "." in t}
    dead = []
    for node in list(model.graph.nodes):
        if (
            node.op == "call_function"
            and node.target == aten.add_.Tensor
            and not node.users
            and isinstance(node.args[0], Node)
            and node.args[0].op == "get_attr"
            and str(node.args[0].target) in counters
        ):
            dead.append(node.args[0])
            model.graph.erase_node(node)
    return dead


def fold_conv_bn_qat(model: GraphModule) -> GraphModule:
    """At convert: fold each QAT ``conv -> batch_norm`` pair for real, with running stats.

    The weight fake-quant keeps its qparams: it observed ``W * s`` during training, which is
    exactly the folded weight ``W'``.
    """
    graph = model.graph
    by_name = {n.name: n for n in graph.nodes}
    changed = False
    for conv in list(graph.nodes):
        record = conv.meta.get(QAT_CONV_BN_KEY)
        if record is None:
            continue
        bn = by_name.get(record["bn"])
        weight = by_name.get(record["weight"])
        scaled = by_name.get(record["scaled_weight"])
        unscaled = by_name.get(record["unscaled"])
        bias = by_name.get(record["bias"]) if record["bias"] else None
        if bn is None or weight is None or scaled is None or bn.args[0] is not unscaled:
            continue
        try:
            s, mean, beta = _bn_scale_shift(model, bn)
            w = _tensor(model, weight)
            b = _tensor(model, bias)
        except _NotFoldable:
            continue
        assert w is not None
        new_w = w * _weight_scale(s, conv, w)
        new_b = ((b if b is not None else torch.zeros_like(mean)) - mean) * s + beta
        w_node = _set_param(model, "_folded_weight", new_w.detach(), weight)
        b_node = _set_param(model, "_folded_bias", new_b.detach(), bias or weight)
        w_in = conv.args[1]
        if isinstance(w_in, Node) and is_observer_node(model, w_in):
            w_in.replace_input_with(scaled, w_node)
        else:
            conv.replace_input_with(scaled, w_node)
        args = list(conv.args)
        args[2] = b_node
        conv.args = tuple(args)
        bn.replace_all_uses_with(conv)
        del conv.meta[QAT_CONV_BN_KEY]
        bn_inputs = [a for a in bn.args if isinstance(a, Node)]
        graph.erase_node(bn)
        erase_dead(model, [scaled, *bn_inputs, *_batch_counter_updates(model, bn_inputs)])
        changed = True
    if changed:
        graph.lint()
        model.recompile()
    return model
