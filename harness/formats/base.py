"""The format record and its registry (see :mod:`harness.formats` for the roles)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the registry itself is torch-free: reports read it without importing torch
    from harness.cases import Built


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


def register(fmt: Format) -> Format:
    """Add a format to the registry (a plug-in format is one call)."""
    FORMATS[fmt.name] = fmt
    return fmt
