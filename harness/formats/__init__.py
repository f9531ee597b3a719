"""Formats: one writer and one reader per way an artifact is saved.

A :class:`Format` writes one file from a :class:`~harness.cases.Built` and reads it back into
something the runner can compare. Readers of tensor formats load with ``weights_only=True``;
the only format whose loader executes code stored in the golden is ``package`` (torch.package
unpickles the model with its interned source), flagged ``runs_code_on_load`` and named so in
reports. ``role`` tells the runner which check a format feeds:

- ``data``: stored data the other checks use (``input``): loads, and equals today's seeded data;
- ``load``: a past artifact loaded today, run on the stored input, must give the stored output;
- ``reproduce``: today's code rebuilt from the case on the stored input must give the stored
  output (``expected``);
- ``graph``: today's graph signature must equal the stored one (``graph``);
- ``aux``: side data for extensions (``intermediates``, for the numeric debugger).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cases import Built
from harness.subjects import UnknownName


@dataclass(frozen=True)
class LoadContext:
    """What a reader may use: the stored inputs and today's case skeleton."""

    inputs: tuple[Any, ...]
    today: Built
    engine: str
    #: False only for formats a case lists in ``Case.trusted_load``
    weights_only: bool = True


@dataclass(frozen=True)
class Format:
    name: str
    filename: str
    role: str
    write: Callable[[Built, Path], None]
    read: Callable[[Path, LoadContext | None], Any]
    weights_only: bool = True
    runs_code_on_load: bool = False
    #: regenerating with the same producer gives bit-identical bytes (regen --check compares
    #: hashes); otherwise it compares loaded contents within policy
    deterministic: bool = True
    description: str = ""


FORMATS: dict[str, Format] = {}
_LOADED = False


def register(fmt: Format) -> Format:
    """Add a format to the registry (a plug-in format is one call)."""
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> Format:
    _load_builtin()
    if name not in FORMATS:
        raise UnknownName("format", name, list(FORMATS))
    return FORMATS[name]


def format_names() -> list[str]:
    _load_builtin()
    return list(FORMATS)


def _load_builtin() -> None:
    # Imported for their registration side effect, in report column order.
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from harness.formats import exported, graph, package, tensors, torchscript

    graph._register()
    # Report column order.
    order = [
        "input",
        "state_dict",
        "state_dict_legacy",
        "safetensors",
        "scripted",
        "traced",
        "exported",
        "package",
        "expected",
        "graph",
        "intermediates",
    ]
    del exported, package, tensors, torchscript
    for name in order:
        FORMATS[name] = FORMATS.pop(name)
