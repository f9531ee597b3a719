"""torch.export formats: exported programs (.pt2) and per-handle intermediate outputs.

``import harness`` registers the ``quantized_decomposed`` ops, so loading an exported golden never
depends on the caller importing anything else first.

``intermediates`` is the numeric debugger's hook: an export-based case may set
``Built.intermediates`` to ``{debug_handle: tensor}``; the runner then stores it, and on a numeric
failure calls :func:`harness.verify.first_divergence` to name the first divergent op.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.cases import Built
from harness.formats import Format, LoadContext, register


def write_exported(b: Built, path: Path) -> None:
    if b.exported is None:
        raise ValueError("case built no exported program")
    torch.export.save(b.exported, str(path))


def read_exported(path: Path, ctx: LoadContext | None) -> Any:
    import harness  # noqa: F401  (quantized_decomposed ops)

    program = torch.export.load(str(path))
    if ctx is None:
        return program
    return ctx.today.run(program.module(), ctx.inputs)


def write_intermediates(b: Built, path: Path) -> None:
    if b.intermediates is None:
        raise ValueError("case recorded no intermediates")
    torch.save({str(k): v for k, v in b.intermediates.items()}, path)


register(
    Format(
        "exported",
        "exported.pt2",
        "load",
        write_exported,
        read_exported,
        weights_only=False,
        description="torch.export program (.pt2); loads without running pickled code",
    )
)
register(
    Format(
        "intermediates",
        "intermediates.pt",
        "aux",
        write_intermediates,
        lambda p, _c: torch.load(p, weights_only=True),
        description="per-debug-handle intermediate outputs (numeric debugger hook)",
    )
)
