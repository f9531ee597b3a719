"""The default quantizer: int8 symmetric weights, int8 affine activations.

Configuration is layered, most specific first: per module name, per module type, per operator
type, then global. ``get_symmetric_quantization_config`` builds the usual recipes:

* weights: int8 in ``[-127, 127]`` (symmetric, so ``-128`` is never used and ``w -> -w`` is
  exact), per tensor or per output channel;
* activations: int8 in ``[-128, 127]``, affine, ``eps = 2**-12`` (the smallest scale, which keeps
  ``1 / scale`` finite in fixed-point backends); static (calibrated) or dynamic (chosen per
  batch at run time, linear only);
* QAT swaps each observer for a fake-quant module that observes and rounds in training.

:func:`get_x86_inductor_quantization_config` is the x86 / Inductor preset: uint8 affine
activations over ``[0, 255]`` (``[0, 127]`` with ``reduce_range``, for CPUs without VNNI) and
int8 per-channel symmetric weights over ``[-128, 127]``, as torchao's ``X86InductorQuantizer``.
Inductor with freezing (``torch._inductor.config.freezing = True``) lowers ``dq -> conv / linear
-> q`` of such a graph to oneDNN's quantized kernels; it lowers nothing with int8 activations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.fx import GraphModule, Node

from harness.quant import fake_quantize, observers
from harness.quant.pt2e import annotators as A
from harness.quant.pt2e.graph_utils import module_stack, type_name
from harness.quant.pt2e.quantizer import QuantizationConfig, QuantizationSpec, Quantizer

ACT_EPS = 2**-12


@functools.cache
def _symmetric_config(
    is_per_channel: bool,
    is_qat: bool,
    is_dynamic: bool,
    act_qmin: int,
    act_qmax: int,
    weight_qmin: int,
    weight_qmax: int,
    act_dtype: torch.dtype = torch.int8,
) -> QuantizationConfig:
    # Observer constructors are ``with_args`` wrappers, which compare equal when they build the
    # same thing: specs from different configs (per-tensor vs per-channel) then still compare
    # equal where they agree, so a value flowing between two configs is quantized once.
    if is_qat:
        act_ctr = (
            observers.MovingAverageMinMaxObserver.with_args(eps=ACT_EPS)
            if is_dynamic
            else fake_quantize.FusedMovingAvgObsFakeQuantize.with_args(
                observer=observers.MovingAverageMinMaxObserver, eps=ACT_EPS
            )
        )
    elif is_dynamic:
        act_ctr = observers.PlaceholderObserver.with_args(eps=ACT_EPS)
    else:
        act_ctr = observers.HistogramObserver.with_args(eps=ACT_EPS)
    act = QuantizationSpec(
        dtype=act_dtype,
        quant_min=act_qmin,
        quant_max=act_qmax,
        qscheme=torch.per_tensor_affine,
        is_dynamic=is_dynamic,
        observer_or_fake_quant_ctr=act_ctr,
    )
    if is_per_channel:
        w_obs: Any = (
            observers.MovingAveragePerChannelMinMaxObserver
            if is_qat
            else observers.PerChannelMinMaxObserver
        )
        qscheme, ch_axis = torch.per_channel_symmetric, 0
    else:
        w_obs = observers.MovingAverageMinMaxObserver if is_qat else observers.MinMaxObserver
        qscheme, ch_axis = torch.per_tensor_symmetric, None
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=weight_qmin,
        quant_max=weight_qmax,
        qscheme=qscheme,
        ch_axis=ch_axis,
        is_dynamic=False,
        observer_or_fake_quant_ctr=(
            fake_quantize.FusedMovingAvgObsFakeQuantize.with_args(observer=w_obs)
            if is_qat
            else w_obs
        ),
    )
    return QuantizationConfig(
        input_activation=act,
        output_activation=None if is_dynamic else act,
        weight=weight,
        bias=None,
        is_qat=is_qat,
    )


def get_symmetric_quantization_config(
    is_per_channel: bool = False,
    is_qat: bool = False,
    is_dynamic: bool = False,
    act_qmin: int = -128,
    act_qmax: int = 127,
    weight_qmin: int = -127,
    weight_qmax: int = 127,
) -> QuantizationConfig:
    """The int8 recipe (cached: equal arguments give the identical config object).

    Static PTQ activations use a histogram observer (it clips outliers to minimise the L2
    quantization error), dynamic ones a placeholder (qparams come from each batch at run time);
    weights use min/max (per channel along axis 0 if ``is_per_channel``); QAT uses fused
    moving-average fake-quant modules.
    """
    return _symmetric_config(
        bool(is_per_channel),
        bool(is_qat),
        bool(is_dynamic),
        act_qmin,
        act_qmax,
        weight_qmin,
        weight_qmax,
    )


def get_x86_inductor_quantization_config(
    is_qat: bool = False, is_dynamic: bool = False, reduce_range: bool = False
) -> QuantizationConfig:
    """The x86 / Inductor recipe (module docstring): uint8 affine activations, int8 per-channel
    symmetric weights over the full ``[-128, 127]``. ``reduce_range`` halves the activation range
    to ``[0, 127]`` for CPUs without VNNI, whose u8 x s8 instructions add pairs of products in
    int16 and would saturate on full-range activations. Cached like
    :func:`get_symmetric_quantization_config`."""
    return _symmetric_config(
        True,
        bool(is_qat),
        bool(is_dynamic),
        0,
        127 if reduce_range else 255,
        -128,
        127,
        torch.uint8,
    )


class SymmetricQuantizer(Quantizer):
    """Annotates linear, conv (1d/2d, transposed, with batch norm and relu), add, mul, max
    pooling and cat, with configs chosen per module name, module type, operator, or globally.

    Works with both recipes of this module: the symmetric int8 one and the x86 / Inductor one.
    """

    def __init__(self) -> None:
        self.global_config: QuantizationConfig | None = None
        self.module_type_config: dict[type, QuantizationConfig | None] = {}
        self.module_name_config: dict[str, QuantizationConfig | None] = {}
        self.operator_type_config: dict[Any, QuantizationConfig | None] = {}

    def set_global(self, config: QuantizationConfig | None) -> SymmetricQuantizer:
        self.global_config = config
        return self

    def set_module_type(
        self, module_type: type, config: QuantizationConfig | None
    ) -> SymmetricQuantizer:
        """Config for nodes produced inside modules of ``module_type`` (``None``: keep float)."""
        self.module_type_config[module_type] = config
        return self

    set_object_type = set_module_type

    def set_module_name(
        self, module_name: str, config: QuantizationConfig | None
    ) -> SymmetricQuantizer:
        """Config for nodes produced inside the submodule ``module_name`` (dotted path)."""
        self.module_name_config[module_name] = config
        return self

    def set_operator_type(
        self, op: torch._ops.OpOverloadPacket, config: QuantizationConfig | None
    ) -> SymmetricQuantizer:
        """Config for patterns whose first node is ``op`` (e.g. ``torch.ops.aten.linear``)."""
        self.operator_type_config[op] = config
        return self

    # --------------------------------------------------------------------------------------
    def _in_module_name(self, node: Node, name: str) -> bool:
        return any(path == name or path.startswith(name + ".") for path, _ in module_stack(node))

    def _in_module_type(self, node: Node, cls: type) -> bool:
        names = type_name(cls)
        return any(typ in names for _, typ in module_stack(node))

    def _is_op_type(self, node: Node, op: Any) -> bool:
        target = node.target
        return target == op or getattr(target, "overloadpacket", None) == op

    def annotate(self, model: GraphModule) -> GraphModule:
        # Most specific first; each later layer skips nodes a more specific layer owns (even
        # when that layer's config is None, which means "leave these in float").
        named = list(self.module_name_config)
        typed = list(self.module_type_config)

        def owned_by_name(n: Node) -> bool:
            return any(self._in_module_name(n, name) for name in named)

        def owned_by_type(n: Node) -> bool:
            return any(self._in_module_type(n, t) for t in typed)

        for name, config in self.module_name_config.items():
            self._annotate_config(model, config, lambda n, name=name: self._in_module_name(n, name))
        for cls, config in self.module_type_config.items():
            self._annotate_config(
                model,
                config,
                lambda n, cls=cls: self._in_module_type(n, cls) and not owned_by_name(n),
            )
        for op, config in self.operator_type_config.items():
            self._annotate_config(
                model,
                config,
                lambda n, op=op: not owned_by_name(n) and not owned_by_type(n),
                root_op=op,
            )
        self._annotate_config(
            model,
            self.global_config,
            lambda n: not owned_by_name(n) and not owned_by_type(n),
        )
        A.propagate_annotation(model)
        return model

    def _annotate_config(
        self,
        model: GraphModule,
        config: QuantizationConfig | None,
        filter_fn: Callable[[Node], bool],
        root_op: Any = None,
    ) -> None:
        if config is None:
            return
        dynamic = config.input_activation is not None and config.input_activation.is_dynamic
        patterns = A.DYNAMIC_PATTERNS if dynamic else A.STATIC_PATTERNS
        for name in patterns:
            if root_op is None:
                A.OP_TO_ANNOTATOR[name](model, config, filter_fn)
                continue
            # Operator-type configs: restrict to patterns whose nodes include ``root_op``.
            matched_root: set[Node] = {n for n in model.graph.nodes if self._is_op_type(n, root_op)}

            def op_filter(n: Node, roots: set[Node] = matched_root) -> bool:
                if not filter_fn(n):
                    return False
                return n in roots or any(a in roots for a in n.all_input_nodes)

            A.OP_TO_ANNOTATOR[name](model, config, op_filter)

    def validate(self, model: GraphModule) -> None:
        return None
