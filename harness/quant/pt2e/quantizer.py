"""The Quantizer API: how a backend says *what* to quantize in an exported graph, and *how*.

A :class:`Quantizer` walks a ``torch.export``-ed ``GraphModule`` and attaches a
:class:`QuantizationAnnotation` to nodes, under ``node.meta[ANNOTATION_KEY]``. An annotation names
the *input edges* to observe (``input_qspec_map``: producer node -> spec) and whether to observe
the node's *output* (``output_qspec``). :func:`~harness.quant.pt2e.prepare_pt2e` then turns every
observed edge or node into an observer (or fake-quant for QAT), and
:func:`~harness.quant.pt2e.convert_pt2e` turns observers into quantize / dequantize ops.

Specs:

* :class:`QuantizationSpec`: observe with ``observer_or_fake_quant_ctr`` and quantize to ``dtype``
  in ``[quant_min, quant_max]`` with ``qscheme`` (per-channel along ``ch_axis``); ``is_dynamic``
  defers qparams to run time.
* :class:`FixedQParamsQuantizationSpec`: qparams known up front (sigmoid output: 1/256, 0).
* :class:`SharedQuantizationSpec`: reuse the observer of another edge ``(producer, consumer)`` or
  node output, so both sides share one scale (pooling, cat, reshapes).
* :class:`DerivedQuantizationSpec`: qparams computed from other observers, e.g. a bias scale
  ``s_bias = s_input * s_weight`` with zero point 0.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import GraphModule, Node

from harness.quant import primitives as P

#: ``node.meta`` key under which a :class:`QuantizationAnnotation` is stored (same key as torch's
#: pt2e flow, so annotators written for torch port over unchanged).
ANNOTATION_KEY = "quantization_annotation"

#: An edge is ``(producer, consumer)``; a node stands for its output.
EdgeOrNode = tuple[Node, Node] | Node

_LEGACY_DTYPES = {torch.quint8: torch.uint8, torch.qint8: torch.int8, torch.qint32: torch.int32}
_QSCHEMES = P.PER_TENSOR_SCHEMES + P.PER_CHANNEL_SCHEMES


def _check_dtype(owner: str, dtype: torch.dtype) -> torch.dtype:
    dtype = _LEGACY_DTYPES.get(dtype, dtype)
    if dtype not in P.SUPPORTED_DTYPES:
        raise ValueError(
            f"{owner}.dtype: unsupported dtype {dtype}; supported: "
            f"{[str(d) for d in P.SUPPORTED_DTYPES]}"
        )
    return dtype


def _check_range(owner: str, dtype: torch.dtype, quant_min: Any, quant_max: Any) -> None:
    if quant_min is None and quant_max is None:
        return
    lo, hi = P.dtype_bounds(dtype)
    if quant_min is not None and not lo <= quant_min <= hi:
        raise ValueError(f"{owner}.quant_min: {quant_min} outside the {dtype} range [{lo}, {hi}]")
    if quant_max is not None and not lo <= quant_max <= hi:
        raise ValueError(f"{owner}.quant_max: {quant_max} outside the {dtype} range [{lo}, {hi}]")
    if quant_min is not None and quant_max is not None and quant_min > quant_max:
        raise ValueError(f"{owner}.quant_min: {quant_min} is greater than quant_max {quant_max}")


class QuantizationSpecBase(abc.ABC):  # noqa: B024 (a marker base, like torch's)
    """Common base of every spec kind, so annotations can hold any of them."""


@dataclass(eq=True, frozen=True)
class QuantizationSpec(QuantizationSpecBase):
    """Quantize an edge or node output to ``dtype`` with qparams from an observer.

    ``observer_or_fake_quant_ctr`` is called with the spec's ``dtype``, ``qscheme``,
    ``quant_min``, ``quant_max``, ``is_dynamic`` (and ``ch_axis`` for per-channel schemes);
    a ``with_args(...)`` constructor keeps its own extra arguments (``eps``, ...).
    """

    dtype: torch.dtype
    observer_or_fake_quant_ctr: Callable[..., torch.nn.Module]
    quant_min: int | None = None
    quant_max: int | None = None
    qscheme: torch.qscheme | None = None
    ch_axis: int | None = None
    is_dynamic: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _check_dtype("QuantizationSpec", self.dtype))
        _check_range("QuantizationSpec", self.dtype, self.quant_min, self.quant_max)
        if self.qscheme is not None and self.qscheme not in _QSCHEMES:
            raise ValueError(f"QuantizationSpec.qscheme: unsupported {self.qscheme}")
        if self.qscheme in P.PER_CHANNEL_SCHEMES and self.ch_axis is None:
            raise ValueError("QuantizationSpec.ch_axis: per-channel qscheme needs a ch_axis")
        if not callable(self.observer_or_fake_quant_ctr):
            raise TypeError("QuantizationSpec.observer_or_fake_quant_ctr: must be callable")


@dataclass(eq=True, frozen=True)
class FixedQParamsQuantizationSpec(QuantizationSpecBase):
    """Quantize with qparams fixed in advance (no calibration): ``q = round(x / scale) + zp``."""

    dtype: torch.dtype
    scale: float
    zero_point: int
    quant_min: int | None = None
    quant_max: int | None = None
    qscheme: torch.qscheme | None = None
    is_dynamic: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _check_dtype("FixedQParamsQuantizationSpec", self.dtype))
        _check_range("FixedQParamsQuantizationSpec", self.dtype, self.quant_min, self.quant_max)
        if not self.scale > 0:
            raise ValueError(f"FixedQParamsQuantizationSpec.scale: must be > 0, got {self.scale}")


@dataclass(eq=True, frozen=True)
class SharedQuantizationSpec(QuantizationSpecBase):
    """Share the observer (hence the qparams) of ``edge_or_node``."""

    edge_or_node: EdgeOrNode


@dataclass(eq=True, frozen=True)
class DerivedQuantizationSpec(QuantizationSpecBase):
    """Qparams derived from the observers of ``derived_from``.

    ``derive_qparams_fn(observers) -> (scale, zero_point)`` receives the observer (or fake-quant)
    modules of the listed edges/nodes after calibration, e.g. for a bias
    ``scale = s_x * s_w``, ``zero_point = 0``.
    """

    derived_from: tuple[EdgeOrNode, ...]
    derive_qparams_fn: Callable[[list[torch.nn.Module]], tuple[torch.Tensor, torch.Tensor]]
    dtype: torch.dtype
    quant_min: int | None = None
    quant_max: int | None = None
    qscheme: torch.qscheme | None = None
    ch_axis: int | None = None
    is_dynamic: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "derived_from", tuple(self.derived_from))
        object.__setattr__(self, "dtype", _check_dtype("DerivedQuantizationSpec", self.dtype))
        _check_range("DerivedQuantizationSpec", self.dtype, self.quant_min, self.quant_max)


@dataclass
class QuantizationAnnotation:
    """What to observe around one node: its input edges and its output.

    ``input_qspec_map`` maps each producer node feeding this node to the spec of that edge;
    ``output_qspec`` is the spec of the node's output (``None``: not observed).
    ``_annotated`` tells later annotators that a pattern already claimed the node.
    """

    input_qspec_map: dict[Node, QuantizationSpecBase | None] = field(default_factory=dict)
    output_qspec: QuantizationSpecBase | None = None
    allow_implicit_sharing: bool = True
    _annotated: bool = False


@dataclass(eq=True, frozen=True)
class QuantizationConfig:
    """One operator configuration: specs for input activations, output, weight and bias.

    ``None`` leaves that part in float. ``is_qat`` marks configs whose specs use fake-quant.
    """

    input_activation: QuantizationSpec | None
    output_activation: QuantizationSpec | None
    weight: QuantizationSpec | None
    bias: QuantizationSpecBase | None
    is_qat: bool = False


class Quantizer(abc.ABC):
    """A backend's quantization recipe for exported graphs.

    ``transform_for_annotation`` may rewrite the graph first (decompositions, op swaps);
    ``annotate`` attaches :class:`QuantizationAnnotation` to nodes in place;
    ``validate`` checks the annotated graph is something the backend can run.
    """

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        return model

    @abc.abstractmethod
    def annotate(self, model: GraphModule) -> GraphModule: ...

    def validate(self, model: GraphModule) -> None:  # noqa: B027 (optional hook)
        """Raise if the annotated ``model`` cannot be lowered; accepts everything by default."""


def get_annotation(node: Node) -> QuantizationAnnotation | None:
    """The annotation a quantizer attached to ``node``, if any."""
    return node.meta.get(ANNOTATION_KEY)


def is_annotated(node: Node) -> bool:
    ann = node.meta.get(ANNOTATION_KEY)
    return ann is not None and ann._annotated


def mark_annotated(nodes: list[Node]) -> None:
    """Flag every node of a matched pattern as claimed, so later annotators skip them."""
    for n in nodes:
        ann = n.meta.get(ANNOTATION_KEY)
        if ann is None:
            ann = QuantizationAnnotation()
            n.meta[ANNOTATION_KEY] = ann
        ann._annotated = True
