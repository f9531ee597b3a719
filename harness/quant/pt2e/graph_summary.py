"""Read-only views of a graph's operators, for tests and graph signatures."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from torch.fx import GraphModule


def op_counts(model: GraphModule) -> Counter:
    """How often each ``call_function`` target occurs."""
    return Counter(n.target for n in model.graph.nodes if n.op == "call_function")


def op_sequence(model: GraphModule) -> list[Any]:
    """``call_function`` targets in graph (execution) order."""
    return [n.target for n in model.graph.nodes if n.op == "call_function"]


def contains_in_order(model: GraphModule, expected: Sequence[Any]) -> bool:
    """True if ``expected`` occurs in the graph's op sequence in this order (gaps allowed)."""
    it = iter(op_sequence(model))
    return all(any(t == want for t in it) for want in expected)
