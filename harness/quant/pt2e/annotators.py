"""Pattern annotators: each finds one operator pattern in an exported graph and annotates it.

``OP_TO_ANNOTATOR[name](model, config, filter_fn=None)`` annotates every unclaimed match whose
nodes all pass ``filter_fn`` and returns the matched node groups. A pattern's input activations,
weight and bias are observed on the *edges* into its first node, its output on its last node;
every node of a match is marked ``_annotated`` so a later (smaller) pattern does not claim it
again. Order therefore matters: fused patterns (conv-bn-relu) run before their parts (conv).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch.fx import GraphModule, Node

from harness.quant.pt2e.quantizer import (
    ANNOTATION_KEY,
    QuantizationAnnotation,
    QuantizationConfig,
    QuantizationSpec,
    SharedQuantizationSpec,
    is_annotated,
    mark_annotated,
)

FilterFn = Callable[[Node], bool] | None
Annotator = Callable[[GraphModule, QuantizationConfig | None, FilterFn], list[list[Node]]]

aten = torch.ops.aten
LINEAR_OPS = (aten.linear.default,)
CONV_OPS = (
    aten.conv1d.default,
    aten.conv2d.default,
    aten.conv1d.padding,
    aten.conv2d.padding,
)
CONV_TRANSPOSE_OPS = (aten.conv_transpose1d.default, aten.conv_transpose2d.input)
RELU_OPS = (aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default)
BN_OPS = (aten.batch_norm.default,)
ADD_OPS = (aten.add.Tensor, aten.add_.Tensor)
MUL_OPS = (aten.mul.Tensor, aten.mul_.Tensor)
# Pooling whose output shares its input's qparams. avg_pool1d/2d are deliberately absent: see
# annotate_pool.
POOL_OPS = (
    aten.max_pool1d.default,
    aten.max_pool2d.default,
    aten.adaptive_avg_pool1d.default,
    aten.adaptive_avg_pool2d.default,
)
# Ops that move values around without changing them: they take their input's qparams.
PROPAGATE_OPS = (
    aten.permute.default,
    aten.view.default,
    aten.reshape.default,
    aten.flatten.using_ints,
    aten.transpose.int,
    aten.t.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.unsqueeze.default,
    aten.contiguous.default,
)


def _passes(nodes: list[Node], filter_fn: FilterFn) -> bool:
    return all(not is_annotated(n) for n in nodes) and (
        filter_fn is None or all(filter_fn(n) for n in nodes)
    )


def _single_user(node: Node) -> bool:
    return len(node.users) == 1


def _is_float_tensor(node: object) -> bool:
    if not isinstance(node, Node):
        return False
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def _annotation(node: Node) -> QuantizationAnnotation:
    ann = node.meta.get(ANNOTATION_KEY)
    if ann is None:
        ann = QuantizationAnnotation()
        node.meta[ANNOTATION_KEY] = ann
    return ann


def _weight_spec_for(node: Node, spec: QuantizationSpec | None) -> QuantizationSpec | None:
    """Per-channel weights are quantized per *output* channel: axis 0 of a conv/linear weight
    ``[out, in/groups, k...]`` but axis 1 of a transposed conv weight ``[in, out/groups, k...]``
    (only when ``groups == 1``; grouped transposed weights keep axis 0, a valid if coarser
    choice)."""
    if spec is None or spec.ch_axis is None or node.target not in CONV_TRANSPOSE_OPS:
        return spec
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    return dataclasses.replace(spec, ch_axis=1) if groups == 1 else spec


def _annotate_weighted(node: Node, config: QuantizationConfig) -> None:
    """Observe input activation, weight and bias edges of a linear / conv node."""
    ann = _annotation(node)
    x = node.args[0]
    if isinstance(x, Node) and config.input_activation is not None:
        ann.input_qspec_map[x] = config.input_activation
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    if isinstance(weight, Node) and config.weight is not None:
        ann.input_qspec_map[weight] = _weight_spec_for(node, config.weight)
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    if isinstance(bias, Node) and config.bias is not None:
        ann.input_qspec_map[bias] = config.bias


def _annotate_output(node: Node, config: QuantizationConfig) -> None:
    if config.output_activation is not None:
        _annotation(node).output_qspec = config.output_activation


def _chain_from(root_ops: tuple, chain: tuple[tuple, ...], model: GraphModule) -> list[list[Node]]:
    """Every ``root -> op1 -> op2 ...`` chain where each intermediate has one user."""
    matches = []
    for root in model.graph.nodes:
        if root.op != "call_function" or root.target not in root_ops:
            continue
        nodes, cur = [root], root
        for ops in chain:
            if not _single_user(cur):
                break
            nxt = next(iter(cur.users))
            if nxt.op != "call_function" or nxt.target not in ops or nxt.args[0] is not cur:
                break
            nodes.append(nxt)
            cur = nxt
        if len(nodes) == len(chain) + 1:
            matches.append(nodes)
    return matches


def _weighted_pattern(root_ops: tuple, chain: tuple[tuple, ...]) -> Annotator:
    def annotate(
        model: GraphModule, config: QuantizationConfig | None, filter_fn: FilterFn = None
    ) -> list[list[Node]]:
        if config is None:
            return []
        done = []
        for nodes in _chain_from(root_ops, chain, model):
            if not _passes(nodes, filter_fn):
                continue
            _annotate_weighted(nodes[0], config)
            _annotate_output(nodes[-1], config)
            mark_annotated(nodes)
            done.append(nodes)
        return done

    return annotate


annotate_linear = _weighted_pattern(LINEAR_OPS, ())
annotate_linear_relu = _weighted_pattern(LINEAR_OPS, (RELU_OPS,))
annotate_conv = _weighted_pattern(CONV_OPS + CONV_TRANSPOSE_OPS, ())
annotate_conv_relu = _weighted_pattern(CONV_OPS, (RELU_OPS,))
annotate_conv_bn = _weighted_pattern(CONV_OPS + CONV_TRANSPOSE_OPS, (BN_OPS,))
annotate_conv_bn_relu = _weighted_pattern(CONV_OPS + CONV_TRANSPOSE_OPS, (BN_OPS, RELU_OPS))
annotate_conv_transpose_relu = _weighted_pattern(CONV_TRANSPOSE_OPS, (RELU_OPS,))


def _binary_pattern(ops: tuple, with_relu: bool) -> Annotator:
    def annotate(
        model: GraphModule, config: QuantizationConfig | None, filter_fn: FilterFn = None
    ) -> list[list[Node]]:
        if config is None or config.input_activation is None:
            return []
        done = []
        for nodes in _chain_from(ops, (RELU_OPS,) if with_relu else (), model):
            # Only float arithmetic on activations (not a BatchNorm's integer
            # ``num_batches_tracked.add_(1)``).
            if not _passes(nodes, filter_fn) or not _is_float_tensor(nodes[-1]):
                continue
            if not any(_is_float_tensor(a) for a in nodes[0].args[:2]):
                continue
            ann = _annotation(nodes[0])
            # Constants (``x + 6``) stay float: only tensor-valued producer nodes are edges.
            for arg in nodes[0].args[:2]:
                if _is_float_tensor(arg):
                    ann.input_qspec_map[arg] = config.input_activation
            _annotate_output(nodes[-1], config)
            mark_annotated(nodes)
            done.append(nodes)
        return done

    return annotate


annotate_add = _binary_pattern(ADD_OPS, False)
annotate_add_relu = _binary_pattern(ADD_OPS, True)
annotate_mul = _binary_pattern(MUL_OPS, False)
annotate_mul_relu = _binary_pattern(MUL_OPS, True)


def annotate_pool(
    model: GraphModule, config: QuantizationConfig | None, filter_fn: FilterFn = None
) -> list[list[Node]]:
    """Max pooling keeps its input's scale: the maximum of values on one grid is on that grid,
    so the output shares the input edge's observer (no requantization, no rounding). Adaptive
    average pooling shares it too, as torchao's and ExecuTorch's XNNPACK quantizers do.

    ``avg_pool1d`` / ``avg_pool2d`` are left in float, as torchao's XNNPACK quantizer leaves
    ``avg_pool2d``: the consumer quantizes the averaged values with its own observer, on a finer
    grid (an average spans less than its inputs), and the pooled values no longer enter the
    input's histogram a second time. Measured (bench/pt2e_vs_torchao.py, Conv-BN-ReLU-AvgPool2d-
    Flatten-Linear, 5 seeds): sharing gave 1.6-2.9 dB less SQNR than torchao; left in float the
    qparams and SQNR are torchao's. The same for adaptive pooling was measured and rejected:
    +1.6-2.9 dB on that model and +1.8 dB on mobilenet_v3 with 8 calibration batches, but
    -6.1 dB on mobilenet_v3 calibrated on one image (bench/arch_sqnr.py), where each global
    average is one value per channel and the consumer's histogram clips the few it sees.
    """
    if config is None or config.input_activation is None:
        return []
    done = []
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in POOL_OPS:
            continue
        x = node.args[0]
        if not isinstance(x, Node) or not _passes([node], filter_fn):
            continue
        ann = _annotation(node)
        ann.input_qspec_map[x] = config.input_activation
        ann.output_qspec = SharedQuantizationSpec((x, node))
        mark_annotated([node])
        done.append([node])
    return done


def annotate_cat(
    model: GraphModule, config: QuantizationConfig | None, filter_fn: FilterFn = None
) -> list[list[Node]]:
    """Concatenation needs one scale for all inputs: every input edge and the output share the
    first input edge's observer."""
    if config is None or config.input_activation is None:
        return []
    done = []
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target is not aten.cat.default:
            continue
        inputs = [a for a in node.args[0] if isinstance(a, Node)]
        if not inputs or not _passes([node], filter_fn):
            continue
        first = inputs[0]
        shared = SharedQuantizationSpec((first, node))
        ann = _annotation(node)
        ann.input_qspec_map[first] = config.input_activation
        for other in inputs[1:]:
            ann.input_qspec_map.setdefault(other, shared)
        ann.output_qspec = shared
        mark_annotated([node])
        done.append([node])
    return done


def propagate_annotation(model: GraphModule) -> None:
    """Let shape-only ops (permute, view, ...) reuse the qparams of the quantized value they
    rearrange, so the quantized region continues through them."""
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in PROPAGATE_OPS or is_annotated(node):
            continue
        prev = node.args[0]
        if not isinstance(prev, Node):
            continue
        prev_ann = prev.meta.get(ANNOTATION_KEY)
        if prev_ann is None or not isinstance(
            prev_ann.output_qspec, (QuantizationSpec, SharedQuantizationSpec)
        ):
            continue
        shared = SharedQuantizationSpec(prev)
        node.meta[ANNOTATION_KEY] = QuantizationAnnotation(
            input_qspec_map={prev: shared}, output_qspec=shared, _annotated=True
        )


def annotate_embedding(
    model: GraphModule, config: QuantizationConfig | None, filter_fn: FilterFn = None
) -> list[list[Node]]:
    """Weight-only: observe the table edge of ``aten.embedding(weight, indices)``."""
    if config is None or config.weight is None:
        return []
    done = []
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target is not aten.embedding.default:
            continue
        if not _passes([node], filter_fn):
            continue
        _annotation(node).input_qspec_map[node.args[0]] = config.weight
        mark_annotated([node])
        done.append([node])
    return done


OP_TO_ANNOTATOR: dict[str, Annotator] = {
    "linear": annotate_linear,
    "linear_relu": annotate_linear_relu,
    "conv": annotate_conv,
    "conv_relu": annotate_conv_relu,
    "conv_bn": annotate_conv_bn,
    "conv_bn_relu": annotate_conv_bn_relu,
    "conv_transpose_relu": annotate_conv_transpose_relu,
    "add": annotate_add,
    "add_relu": annotate_add_relu,
    "mul": annotate_mul,
    "mul_relu": annotate_mul_relu,
    "pool": annotate_pool,
    "cat": annotate_cat,
    "embedding": annotate_embedding,
}

# Only these patterns are quantized dynamically (activations' qparams chosen at run time).
DYNAMIC_PATTERNS = ("linear_relu", "linear")
# Static patterns in matching order: fused ones first so their parts are not claimed alone.
STATIC_PATTERNS = (
    "linear_relu",
    "linear",
    "conv_bn_relu",
    "conv_bn",
    "conv_relu",
    "conv_transpose_relu",
    "conv",
    "pool",
    "add_relu",
    "add",
    "mul_relu",
    "mul",
    "cat",
)
