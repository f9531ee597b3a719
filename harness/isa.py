"""ISA class: what the native kernels (fbgemm, oneDNN, ATen) dispatch on, and how to cap it.

Quantized kernels pick their code path from the CPU's instruction set, and the path changes the
numbers (fbgemm's AVX2 int8 GEMM forms pair products in a saturating int16, VNNI's
``vpdpbusd`` does not; oneDNN, ATen and torch's x86 engine choose their kernels the same way).
A golden records the class it was computed on; a verdict compares like with like.

Classes, lowest first (:data:`CLASSES`)::

    base         no AVX2: fbgemm is unavailable, oneDNN runs SSE4.1, ATen its default kernels
    avx2         AVX2 + FMA
    avx512       AVX512 F/BW/DQ/VL ("AVX512_CORE")
    avx512_vnni  AVX512_CORE + VNNI (vpdpbusd)
    amx          AVX512_CORE + VNNI + AMX tiles (int8)

A process can *cap* itself to a lower class, never raise itself: each library reads a switch
from the environment once, when it starts, so a capped computation runs in a process started
with :func:`cap_environment` (harness.isolation's workers). :func:`detect` reports the class this
process computes in: the CPU's class, lowered by any cap present in its environment.

The run-wide switch ``QBC_ISA_CAP=<class>`` caps every process of a run (pytest and its xdist
workers, ``qbc verify``, the regeneration tool): :func:`apply_run_cap` runs when ``harness`` is
imported, before torch, and writes the library switches into ``os.environ`` so every child
inherits them. ``QBC_ISA_CAP`` is an upper bound: on a CPU already at or below it, it changes
nothing.

This module does not import torch (it must run before torch starts).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: every ISA class, lowest first; the order is the capping order
CLASSES = ("base", "avx2", "avx512", "avx512_vnni", "amx")

#: how a check compares a golden's numbers across classes (harness.verify.isa_plan): ``exact``
#: (numbers of this machine's class, or that match the golden's anyway), ``capped`` (recomputed
#: in a worker capped to the golden's lower class), ``approx`` (across classes by the policy's
#: measured ISA rules, when neither is possible)
MODES = ("exact", "capped", "approx")

#: the run-wide switch (see module docstring)
RUN_CAP_VARIABLE = "QBC_ISA_CAP"

FBGEMM = "FBGEMM_ENABLE_INSTRUCTIONS"
ONEDNN = "ONEDNN_MAX_CPU_ISA"
ATEN = "ATEN_CPU_CAPABILITY"

#: per library: its environment switch, and the value that caps it to each class (None: the
#: library cannot be capped to that class). Spellings are the libraries' own: fbgemm upper-cases
#: and looks the value up in {AVX2, AVX512, AVX512_E1, ...}; oneDNN upper-cases and accepts its
#: cpu_isa names; ATen compares lower-case strings exactly ("AVX2" is silently ignored).
CAPS: dict[str, dict[str, str | None]] = {
    FBGEMM: {
        "base": None,  # fbgemm has no path below AVX2 (torch then drops the fbgemm engine)
        "avx2": "AVX2",
        "avx512": "AVX512",
        "avx512_vnni": "AVX512_E1",
        "amx": "AVX512_E1",  # fbgemm has no AMX kernels: VNNI is its top
    },
    ONEDNN: {
        "base": "SSE41",
        "avx2": "AVX2",
        "avx512": "AVX512_CORE",
        "avx512_vnni": "AVX512_CORE_VNNI",
        "amx": "AVX512_CORE_AMX",
    },
    ATEN: {
        "base": "default",
        "avx2": "avx2",
        "avx512": "avx512",
        "avx512_vnni": "avx512",
        "amx": "avx512",
    },
}

# What each library's switch value means as a class (the inverse of CAPS, with the aliases the
# libraries accept), to name the class of a process whose environment carries caps.
_CAP_CLASS: dict[str, dict[str, str]] = {
    FBGEMM: {
        "AVX2": "avx2",
        "AVX512": "avx512",
        "AVX512_256": "avx512",
        "AVX512_E1": "avx512_vnni",
        "AVX512_E1_256": "avx512_vnni",
    },
    ONEDNN: {
        "SSE41": "base",
        "AVX": "base",
        "AVX2": "avx2",
        "AVX2_VNNI": "avx2",
        "AVX2_VNNI_2": "avx2",
        "AVX512_CORE": "avx512",
        "AVX512_CORE_VNNI": "avx512_vnni",
        "AVX512_CORE_BF16": "avx512_vnni",
        "AVX10_1_512": "avx512_vnni",
        "AVX512_CORE_FP16": "avx512_vnni",
        "AVX512_CORE_AMX": "amx",
        "AVX10_1_512_AMX": "amx",
        "AVX10_1_512_AMX_FP16": "amx",
        "ALL": "amx",
    },
    ATEN: {"default": "base", "avx2": "avx2", "avx512": "amx"},
}


@dataclass(frozen=True)
class Gap:
    """Something capping cannot reproduce: torch decides it from the CPU itself (cpuinfo), not
    from the capped libraries, so a file of ``formats`` of a golden on ``engines`` of
    ``subject``, written in a class below ``native_from`` by a process capped on a CPU of
    ``native_from`` or higher, differs from the file a real CPU of that class writes (in bytes;
    the numbers agree, measured)."""

    subject: str
    engines: tuple[str, ...]
    formats: tuple[str, ...]
    native_from: str
    reason: str


#: What capping cannot reproduce, measured (issue 11's note). The regeneration check compares
#: such a file only between two goldens that wrote it the same way (both really, or both by
#: capping on such a CPU), and names the others as not comparable instead of calling them drift.
EMULATION_GAPS: tuple[Gap, ...] = (
    Gap(
        subject="torch_ao",
        engines=("x86",),
        formats=("scripted", "traced"),
        native_from="avx512_vnni",
        reason="torch's x86 engine packs convolutions with oneDNN on a CPU with AVX512-VNNI and "
        "with fbgemm elsewhere (it asks the CPU, not the capped libraries); a TorchScript "
        "archive keeps the packed weights in the layout of the kernel that packed them (same "
        "values, other bytes)",
    ),
)


def emulation_gap(subject: str, engine: str, fmt: str, cls: str, cpu: str) -> Gap | None:
    """The gap by which a ``fmt`` file of (``subject``, ``engine``) written in class ``cls`` by
    a process on a ``cpu``-class CPU differs from a real ``cls`` CPU's, if any."""
    for gap in EMULATION_GAPS:
        if (
            subject == gap.subject
            and engine in gap.engines
            and fmt in gap.formats
            and rank(cls) < rank(gap.native_from) <= rank(cpu)
        ):
            return gap
    return None


def aten_capped(env: Mapping[str, str] | None = None) -> bool:
    """Whether ATen's kernels in a process with ``env`` (default: this one's) dispatch below the
    level this CPU gives them (ATen's levels: default < avx2 < avx512).

    Code that Inductor generates is compiled for the CPU and linked against ATen's vectorized
    helpers; with ATen capped below the CPU the two disagree and the compiled kernels compute
    garbage (measured: torch 2.13.0, ``ATEN_CPU_CAPABILITY=avx2`` on an avx512_vnni CPU, a
    converted Linear-ReLU-Linear program off by 5e9; exact uncapped and with only the fbgemm or
    oneDNN cap). A real lower CPU has no such mismatch: it is an emulation gap, not a verdict.
    """
    env = os.environ if env is None else env
    value = env.get(ATEN)
    if not value or value not in _CAP_CLASS[ATEN]:
        return False  # unset, or a value ATen ignores
    cpu = detect().cpu
    return CAPS[ATEN][lower(cpu, _CAP_CLASS[ATEN][value])] != CAPS[ATEN][cpu]


class IsaCapError(RuntimeError):
    """A cap that cannot be honoured (unknown class, unreachable class, torch already started)."""


def rank(cls: str) -> int:
    """Position of ``cls`` in :data:`CLASSES` (ValueError naming the known classes)."""
    try:
        return CLASSES.index(cls)
    except ValueError:
        raise ValueError(f"unknown ISA class {cls!r}; known: {', '.join(CLASSES)}") from None


def lower(a: str, b: str) -> str:
    """The lower of two classes."""
    return a if rank(a) <= rank(b) else b


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (first ``flags`` line of /proc/cpuinfo; empty if unreadable)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def class_of_flags(flags: frozenset[str] | set[str]) -> str:
    """The highest class whose instructions are all in ``flags``."""
    if not {"avx2", "fma"} <= flags:
        return "base"
    if not {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "avx2"
    if not ({"avx512_vnni", "avx512vnni"} & flags):
        return "avx512"
    if not {"amx_tile", "amx_int8"} <= flags:
        return "avx512_vnni"
    return "amx"


def cap_of_environment(env: Mapping[str, str]) -> str | None:
    """The class the library switches in ``env`` cap a process to (the lowest of them), or None
    when no switch is set. A value a library does not understand caps nothing (the library
    ignores it too)."""
    capped: str | None = None
    for var, meaning in _CAP_CLASS.items():
        value = env.get(var)
        if not value:
            continue
        key = value if var == ATEN else value.upper()
        if key in meaning:
            capped = meaning[key] if capped is None else lower(capped, meaning[key])
    return capped


@dataclass(frozen=True)
class Isa:
    """The ISA of this process: the CPU's class, and the class its kernels run at."""

    #: class of the CPU (/proc/cpuinfo), uncapped
    cpu: str
    #: class this process computes in: ``cpu`` lowered by the caps in its environment
    cls: str
    #: the library switches set in this process's environment (for messages)
    caps: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def capped(self) -> bool:
        return self.cls != self.cpu

    def describe(self) -> str:
        """``avx512_vnni`` or ``avx2 (capped from avx512_vnni)``."""
        return f"{self.cls} (capped from {self.cpu})" if self.capped else self.cls

    def reachable(self) -> tuple[str, ...]:
        """Classes this process can compute in: its own and every lower one a child process can
        be capped to, lowest first."""
        return tuple(c for c in CLASSES[: rank(self.cls) + 1] if can_cap(self.cpu, c))


def isa_of(flags: frozenset[str] | set[str], env: Mapping[str, str]) -> Isa:
    """The :class:`Isa` of a process with these CPU flags and this environment."""
    cpu = class_of_flags(frozenset(flags))
    cap = cap_of_environment(env)
    caps = {v: env[v] for v in CAPS if env.get(v)}
    return Isa(cpu=cpu, cls=cpu if cap is None else lower(cpu, cap), caps=caps)


@functools.cache
def detect() -> Isa:
    """This process's :class:`Isa`, detected once (the switches are read at start-up, so they
    cannot change later in the process)."""
    return isa_of(cpu_flags(), os.environ)


def machine_class() -> str:
    """The class this process computes in (``detect().cls``)."""
    return detect().cls


def can_cap(cpu: str, cls: str) -> bool:
    """Whether a process on a ``cpu``-class CPU can be capped to compute in ``cls``: not above
    the CPU, and every library has a switch for it."""
    return rank(cls) <= rank(cpu) and all(values[cls] is not None for values in CAPS.values())


def cap_environment(cls: str, cpu: str | None = None) -> dict[str, str]:
    """The environment variables that cap a process to ``cls`` (all three libraries together,
    so no library is left at a higher class). Empty when ``cls`` is the CPU's own class.
    IsaCapError when ``cls`` is above the CPU or a library cannot be capped to it."""
    cpu = cpu or detect().cpu
    if rank(cls) > rank(cpu):
        raise IsaCapError(f"cannot raise a {cpu} CPU to ISA class {cls}; only cap it lower")
    if cls == cpu:
        return {}
    missing = [var for var, values in CAPS.items() if values[cls] is None]
    if missing:
        raise IsaCapError(
            f"cannot cap to ISA class {cls}: {', '.join(missing)} has no setting for it"
        )
    return {var: str(values[cls]) for var, values in CAPS.items()}


def apply_run_cap(environ: dict[str, str] | None = None) -> str | None:
    """Honour ``QBC_ISA_CAP``: write the library caps for ``min(CPU class, QBC_ISA_CAP)`` into
    ``environ`` (default ``os.environ``, so child processes inherit them). Returns the capped
    class, or None when there is no switch or it changes nothing. Must run before torch is
    imported: IsaCapError if torch already runs uncapped, or if the switch conflicts with a
    library switch already set."""
    env = os.environ if environ is None else environ
    wanted = env.get(RUN_CAP_VARIABLE, "").strip()
    if not wanted:
        return None
    try:
        rank(wanted)
    except ValueError as exc:
        raise IsaCapError(f"{RUN_CAP_VARIABLE}={wanted}: {exc}") from None
    cpu = class_of_flags(cpu_flags())
    target = lower(cpu, wanted)
    caps = cap_environment(target, cpu)
    missing = {var: value for var, value in caps.items() if env.get(var) != value}
    conflicting = {var: env[var] for var in missing if env.get(var)}
    if conflicting:
        raise IsaCapError(
            f"{RUN_CAP_VARIABLE}={wanted} asks for {caps}, but the environment already sets "
            f"{conflicting}; unset one of them"
        )
    if missing and environ is None and "torch" in sys.modules:
        raise IsaCapError(
            f"{RUN_CAP_VARIABLE}={wanted} was honoured after torch started, which reads its ISA "
            "switches once at start-up; import harness before torch, or export "
            + " ".join(f"{k}={v}" for k, v in caps.items())
        )
    env.update(missing)
    if environ is None:
        detect.cache_clear()
    return target if caps else None
