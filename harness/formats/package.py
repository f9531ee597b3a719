"""torch.package format: a float model packaged with its interned source.

A format whose loader executes code from the golden, so it loads only inside harness.sandbox:
``PackageImporter`` runs the interned module source and unpickles the model. The reader then re-applies today's quantization
transform (``Built.transform``) and returns ``{"output", "get_attr"}`` so both numerics and the
get_attr targets can be checked against the golden.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.cases import Built
from harness.formats.base import Format, LoadContext, register
from harness.graphsig import section, signature

PACKAGE_NAME = "qbc_case"
RESOURCE = "model.pkl"


def write_package(b: Built, path: Path) -> None:
    from torch.package import PackageExporter

    if b.float_model is None:
        raise ValueError("case built no float model to package")
    with PackageExporter(str(path)) as exporter:
        for module in b.package_interns:
            exporter.intern(module)
        exporter.save_pickle(PACKAGE_NAME, RESOURCE, b.float_model)


def read_package(path: Path, ctx: LoadContext | None) -> Any:
    from torch.package import PackageImporter

    model = PackageImporter(str(path)).load_pickle(PACKAGE_NAME, RESOURCE)
    if ctx is None:
        return model
    if ctx.today.transform is None:
        raise ValueError("case has no quantization transform for packaged models")
    quantized = ctx.today.transform(model, ctx.inputs)
    return {
        "output": ctx.today.run(quantized, ctx.inputs),
        "get_attr": section(signature(quantized), "get_attr"),
    }


register(
    Format(
        "package",
        "model.package.pt",
        "load",
        write_package,
        read_package,
        weights_only=False,
        runs_code_on_load=True,
        description="torch.package float model; RUNS CODE ON LOAD (interned source)",
    )
)
