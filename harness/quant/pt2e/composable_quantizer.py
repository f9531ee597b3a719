"""Run several quantizers in turn, each annotating what the earlier ones left alone.

A quantizer must not rewrite annotations an earlier one made (the earlier backend's decisions
would be silently lost): :class:`ComposableQuantizer` checks this after each ``annotate`` and
raises ``RuntimeError`` naming the node and the offending quantizer.
"""

from __future__ import annotations

from typing import Any

from torch.fx import GraphModule, Node

from harness.quant.pt2e.quantizer import ANNOTATION_KEY, QuantizationAnnotation, Quantizer


def _snapshot(ann: QuantizationAnnotation) -> tuple[Any, ...]:
    return (
        ann,
        tuple((k, v) for k, v in ann.input_qspec_map.items()),
        ann.output_qspec,
        ann._annotated,
    )


class ComposableQuantizer(Quantizer):
    """Apply ``quantizers`` in order (earlier ones win: order dynamic before static, etc.)."""

    def __init__(self, quantizers: list[Quantizer]) -> None:
        super().__init__()
        self.quantizers = list(quantizers)

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        for q in self.quantizers:
            model = q.transform_for_annotation(model)
        return model

    def annotate(self, model: GraphModule) -> GraphModule:
        seen: dict[Node, tuple[Any, ...]] = {}
        for q in self.quantizers:
            q.annotate(model)
            for node in model.graph.nodes:
                before = seen.get(node)
                ann = node.meta.get(ANNOTATION_KEY)
                if before is not None:
                    if not isinstance(ann, QuantizationAnnotation) or _snapshot(ann) != before:
                        raise RuntimeError(
                            f"ComposableQuantizer: {type(q).__name__} changed the quantization "
                            f"annotation of node '{node.name}' made by an earlier quantizer"
                        )
                elif isinstance(ann, QuantizationAnnotation):
                    seen[node] = _snapshot(ann)
        return model

    def validate(self, model: GraphModule) -> None:
        for q in self.quantizers:
            q.validate(model)
