"""TorchScript formats: scripted and traced modules (torch.jit.save / torch.jit.load).

torch.jit.load reads TorchScript code, not pickled Python, but running that code is running code
from the golden: its ops can read and write files (``torch.from_file(PATH, True, N)`` creates
one), so both formats are ``runs_code_on_load`` and load only inside :mod:`harness.sandbox`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.cases import Built
from harness.formats.base import Format, LoadContext, register


def _saver(attr: str) -> Any:
    def write(b: Built, path: Path) -> None:
        module = b.get(attr)
        if module is None:
            raise ValueError(f"case built no {attr} module")
        torch.jit.save(module, str(path))

    return write


def read_module(path: Path, ctx: LoadContext | None) -> Any:
    module = torch.jit.load(str(path))
    if ctx is None:
        return module
    return ctx.today.run(module, ctx.inputs)


register(
    Format(
        "scripted",
        "scripted.pt",
        "load",
        _saver("scripted"),
        read_module,
        weights_only=False,
        runs_code_on_load=True,
        # The archive's debug tables embed the absolute paths of the scripted sources (qbc's
        # checkout and torch's install), so bytes depend on where the generator ran; a clean
        # clone elsewhere regenerates identical code and state but different bytes.
        deterministic=False,
        description="torch.jit.script module (TorchScript archive)",
    )
)
register(
    Format(
        "traced",
        "traced.pt",
        "load",
        _saver("traced"),
        read_module,
        weights_only=False,
        runs_code_on_load=True,
        # The archive's debug tables record the Python call stack at trace time (file paths and
        # line numbers of the caller), so bytes depend on who called the generator.
        deterministic=False,
        description="torch.jit.trace module (TorchScript archive)",
    )
)
