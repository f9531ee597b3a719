"""Formats: one writer and one reader per way an artifact is saved.

A :class:`Format` writes one file from a :class:`~harness.cases.Built` and reads it back into
something the runner can compare. Readers of tensor formats load with ``weights_only=True``;
formats whose loading can run code stored in the golden (``package``: torch.package runs its
interned source; ``scripted`` / ``traced``: TorchScript ops can touch files) are flagged
``runs_code_on_load``, load only inside :mod:`harness.sandbox` and are named so in reports;
``exported`` is read by :mod:`harness.formats.pt2`, which runs nothing from the archive. ``role`` tells the runner which check a format feeds:

- ``data``: stored data the other checks use (``input``): loads, and equals today's seeded data;
- ``load``: a past artifact loaded today, run on the stored input, must give the stored output;
- ``reproduce``: today's code rebuilt from the case on the stored input must give the stored
  output (``expected``);
- ``graph``: today's graph signature must equal the stored one (``graph``);
- ``aux``: side data for extensions (``intermediates``, for the numeric debugger).
"""

from __future__ import annotations

import functools

from harness.formats.base import FORMATS, Format, LoadContext, register
from harness.outcomes import UnknownName

__all__ = ["FORMATS", "Format", "LoadContext", "format_names", "get_format", "register"]

#: report column order of the built-in formats (plug-in formats follow, in registration order)
_ORDER = (
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
)


def get_format(name: str) -> Format:
    _load_builtin()
    if name not in FORMATS:
        raise UnknownName("format", name, list(FORMATS))
    return FORMATS[name]


def format_names() -> list[str]:
    """Every format's name in report order: the built-in ones, then plug-ins in registration
    order. Known without importing the built-in readers (and torch): a report's columns only
    need the names."""
    return [*_ORDER, *(name for name in FORMATS if name not in _ORDER)]


@functools.cache
def _load_builtin() -> None:
    # Imported for their registration side effect, lazily: torch.export / torch.package are only
    # imported when a format is asked for.
    from harness.formats import exported, graph, package, tensors, torchscript

    del exported, graph, package, tensors, torchscript
    plugins = {k: v for k, v in FORMATS.items() if k not in _ORDER}
    ordered = {name: FORMATS[name] for name in _ORDER if name in FORMATS}
    FORMATS.clear()
    FORMATS.update({**ordered, **plugins})
