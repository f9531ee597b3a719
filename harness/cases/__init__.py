"""The case catalogue: one declarative row per deterministic scenario.

A :class:`Case` is data: which subject it belongs to, a builder, a seed, input shapes, how inputs
are made and calibrated, which formats are written and which engines it runs on. The builder is
the only code in a row; it receives a :class:`BuildContext` and returns a :class:`Built` holding
everything the formats need (the module to run, inputs, expected output, optional scripted /
traced / exported / packaged artifacts, and the graph signature).

Adding a case is a table edit in the subject's case module (``harness/cases/<subject>.py``);
the generator, store, runner, report and coverage gate pick it up without further code. Cases are
found by subject (``harness.subjects.get_case`` / ``all_cases``): this module knows no subject.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class BuildContext:
    """What a builder gets: the case row, the engine, and the inputs to calibrate and run on.

    ``inputs`` is None when generating (the builder makes them from ``case.seed``); the runner's
    reproduce check passes the stored inputs so today's code is judged on exactly the past data.
    """

    case: Case
    engine: str
    inputs: tuple[Any, ...] | None = None

    def make_inputs(self) -> tuple[Any, ...]:
        """The stored inputs when given, else fresh seeded ones made by the case's input maker."""
        if self.inputs is not None:
            return self.inputs
        gen = torch.Generator().manual_seed(self.case.seed + 1)
        if self.case.make_inputs is not None:
            return tuple(self.case.make_inputs(self.case.input_shapes, gen))
        return tuple(self.case.make_input(shape, gen) for shape in self.case.input_shapes)


@dataclass
class Built:
    """Everything one (case, engine) produces with today's code.

    ``run(model, inputs)`` is how a (re)loaded model is executed; its result is compared with
    ``expected`` by the tolerance policy. ``fresh()`` returns today's empty module of the same
    structure, into which stored state_dicts are loaded. ``transform(float_model, inputs)`` is the
    quantization flow the ``package`` format reapplies to a past float model.
    """

    model: Any
    inputs: tuple[Any, ...]
    expected: Any
    run: Callable[[Any, tuple[Any, ...]], Any] = lambda m, xs: m(*xs)
    fresh: Callable[[], Any] | None = None
    scripted: Any = None
    traced: Any = None
    exported: Any = None
    float_model: Any = None
    package_interns: tuple[str, ...] = ()
    transform: Callable[[Any, tuple[Any, ...]], Any] | None = None
    signature: str | Callable[[], str] | None = None
    intermediates: dict[str, Any] | None = None

    def get(self, name: str) -> Any:
        """Field ``name``, computing it first if the builder left a zero-argument callable.

        Builders pass expensive artifacts (scripting, tracing, signatures) lazily so the runner,
        which mostly needs ``expected`` and ``fresh``, does not pay for them on every golden.
        """
        value = getattr(self, name)
        if callable(value) and not isinstance(value, (torch.nn.Module, torch.jit.ScriptModule)):
            value = value()
            setattr(self, name, value)
        return value


@dataclass(frozen=True)
class Case:
    """One row of the catalogue (see module docstring)."""

    subject: str
    name: str
    builder: Callable[[BuildContext], Built]
    input_shapes: tuple[tuple[int, ...], ...]
    formats: tuple[str, ...]
    engines: tuple[str, ...] | None = None  # None: every engine of the subject
    seed: int = 0
    make_input: Callable[[tuple[int, ...], torch.Generator], Any] = field(
        default=lambda shape, gen: torch.rand(*shape, generator=gen)
    )
    calibration: str = "stored inputs, one pass"
    #: formats of this case whose files cannot load with weights_only=True (e.g. torch.ao's
    #: dynamic LSTM pickles TorchScript packed-params objects); they load with full unpickling,
    #: which can run code, and the manifest and report say so
    trusted_load: tuple[str, ...] = ()
    #: builds the whole input tuple at once (e.g. integer codes + scale + zero point); when None,
    #: one ``make_input(shape)`` per entry of ``input_shapes``
    make_inputs: (
        Callable[[tuple[tuple[int, ...], ...], torch.Generator], tuple[Any, ...]] | None
    ) = None
    #: engine -> formats, for engines that support fewer formats (e.g. eager-only kernels)
    formats_by_engine: dict[str, tuple[str, ...]] | None = field(default=None, hash=False)

    def formats_for(self, engine: str) -> tuple[str, ...]:
        """The formats written for ``engine``."""
        if self.formats_by_engine and engine in self.formats_by_engine:
            return self.formats_by_engine[engine]
        return self.formats

    description: str = ""

    def spec(self) -> dict[str, Any]:
        """The row as JSON-able data (written into every manifest, so goldens say what they are)."""
        return {
            "subject": self.subject,
            "name": self.name,
            "builder": f"{self.builder.__module__}.{self.builder.__qualname__}",
            "seed": self.seed,
            "input_shapes": [list(s) for s in self.input_shapes],
            "calibration": self.calibration,
            "formats": list(self.formats),
            "engines": list(self.engines) if self.engines is not None else None,
            "formats_by_engine": {k: list(v) for k, v in (self.formats_by_engine or {}).items()},
            "description": self.description,
            "trusted_load": list(self.trusted_load),
        }


def select_cases(cases: Sequence[Case], pattern: str | None) -> list[Case]:
    """Cases whose name matches the glob ``pattern`` (all when None); unknown pattern -> error."""
    if not pattern:
        return list(cases)
    chosen = [c for c in cases if fnmatch.fnmatchcase(c.name, pattern)]
    if not chosen:
        raise KeyError(f"no case matches {pattern!r}")
    return chosen
