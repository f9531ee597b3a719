"""torch.export formats: exported programs (.pt2) and per-handle intermediate outputs.

An exported golden is read by :mod:`harness.formats.pt2`, never by ``torch.export.load``: the
archive's entries and the program's JSON are checked first and its tensors are built from raw
bytes, so no pickle, shared object or string of the golden is ever run (torch's own loader can
do all three). The reader registers the ``quantized_decomposed`` ops itself, so loading never
depends on the caller importing anything else first.

``intermediates`` is the numeric debugger's hook: an export-based case lists the format and the
generator stores ``Built.intermediates`` or, when the builder left it None, every debug handle's
output of ``Built.exported`` (harness.quant.pt2e.numeric_debugger.program_intermediates); on a
numeric failure :func:`harness.verify.first_divergence` names the first divergent op.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.cases import Built
from harness.formats.base import Format, LoadContext, register


def write_exported(b: Built, path: Path) -> None:
    if b.exported is None:
        raise ValueError("case built no exported program")
    torch.export.save(b.exported, str(path))


def read_exported(path: Path, ctx: LoadContext | None) -> Any:
    from harness.formats import pt2

    program = pt2.load(path)
    if ctx is None:
        return program
    return ctx.today.run(program.module(), ctx.inputs)


def write_intermediates(b: Built, path: Path) -> None:
    data = b.intermediates
    if data is None and b.exported is not None:
        # Every debug handle's output of the exported program on the case's inputs (handles
        # generated on the float graph before prepare_pt2e name the float ops).
        from harness.quant.pt2e.numeric_debugger import program_intermediates

        data = program_intermediates(b.exported, b.inputs)
    if data is None:
        raise ValueError("case recorded no intermediates and built no exported program")
    torch.save({str(k): v for k, v in data.items()}, path)


register(
    Format(
        "exported",
        "exported.pt2",
        "load",
        write_exported,
        read_exported,
        # Not a weights-only torch.load: read in a child process (crash isolation), but it runs
        # nothing from the file, so it needs no sandbox (runs_code_on_load stays False).
        weights_only=False,
        description="torch.export program (.pt2), read by qbc's safe reader: runs no code",
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
