"""The ``expected`` and ``graph`` formats: stored outputs and the normalized graph signature.

What a signature records and how it is laid out is :mod:`harness.graphsig`; this module only
writes and reads it as ``graph.txt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.cases import Built
from harness.formats.base import Format, register


def _write_graph(b: Built, path: Path) -> None:
    if b.get("signature") is None:
        raise ValueError("case built no graph signature")
    path.write_text(b.get("signature"))


def _read_graph(path: Path, _ctx: Any) -> str:
    return path.read_text()


register(
    Format(
        "expected",
        "expected.pt",
        "reproduce",
        lambda b, p: torch.save(b.expected, p),
        lambda p, _c: torch.load(p, weights_only=True),
        description="outputs of the case on the stored input (torch.save)",
    )
)
register(
    Format(
        "graph",
        "graph.txt",
        "graph",
        _write_graph,
        _read_graph,
        description="normalized graph signature (text)",
    )
)
