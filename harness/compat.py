"""Thin adapter over the torch release in use: feature checks and expected deprecations.

torch 2.13 warns on its quantized dtypes, TorchScript and ``torch.ao.quantization``, and has
removed ``torch.ao.quantization.pt2e``. Code that touches those on purpose wraps the call in
:func:`expected_torch_deprecations`, so the project-wide rule "every warning is an error" keeps
catching everything else, in particular warnings raised by qbc itself.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import re
import sys
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it: this leaf is imported by the pytest
# plugin's controller side and the ``qbc`` command, which must start without torch.

# torch 2.6 warns when an fx graph reads a plain tensor attribute (neither parameter nor buffer)
# with get_attr: once while ExportedProgram.module() unlifts such a constant, and on every
# Graph.lint() afterwards. torch.export itself produces such attributes; the warnings are harmless
# and gone by torch 2.13.
_FX_CONSTANT_NOISE = (
    r"Attempted to insert a get_attr Node with no underlying reference in the owning GraphModule",
    r"Node \S+ target \S+ \S+ of \S* does not reference an nn\.Module, nn\.Parameter, or buffer",
)

# Messages torch emits for features it is deprecating. Each pattern is anchored on torch's wording
# so that an unrelated warning with the same category still surfaces.
TORCH_DEPRECATION_PATTERNS: tuple[tuple[str, type[Warning]], ...] = (
    (r"`torch\.jit\.\w+` is deprecated", DeprecationWarning),
    # torch 2.14 raised the TorchScript deprecation from DeprecationWarning to FutureWarning.
    (r"`torch\.jit\.\w+` is deprecated", FutureWarning),
    (r".*quantized tensor creation functions .* are deprecated", UserWarning),
    (r".*torch\.ao\.quantization.* (is|are) deprecated", DeprecationWarning),
    (r".*torch\.ao\.quantization.* (is|are) deprecated", UserWarning),
    (r".*torch\.ao\.quantization.* (is|are) deprecated", FutureWarning),
    (r"Please use quant_min and quant_max to specify the range for observers", UserWarning),
    (r".*TypedStorage is deprecated", UserWarning),
    (r"The given NumPy array is not writable", UserWarning),
    # copy.deepcopy of an exported GraphModule / ExportedProgram (its pytree specs) on torch 2.13.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # torch 2.6's fx passes (e.g. torch.ao's convert_fx lowering) lint graphs with packed weights.
    *((pattern, UserWarning) for pattern in _FX_CONSTANT_NOISE),
)


@contextlib.contextmanager
def expected_torch_deprecations() -> Iterator[None]:
    """Silence torch's own deprecation warnings for the duration of the block, and nothing else."""
    with warnings.catch_warnings():
        for pattern, category in TORCH_DEPRECATION_PATTERNS:
            warnings.filterwarnings("ignore", message=pattern, category=category)
        yield


def torch_version() -> tuple[int, int, int]:
    """The running torch release as (major, minor, patch), ignoring local tags like ``+cpu``."""
    parts = re.findall(r"\d+", torch_version_string().split("+")[0])[:3]
    return tuple(int(p) for p in [*parts, "0", "0"][:3])  # type: ignore[return-value]


def torch_version_string() -> str:
    """``torch.__version__`` (e.g. ``2.13.0+cpu``), read from the installed distribution's
    metadata while torch is not imported yet, so that asking costs no torch import."""
    if "torch" not in sys.modules:
        try:
            return importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            pass  # e.g. a torch source checkout on sys.path
    import torch

    return str(torch.__version__)


def torch_release() -> str:
    """The torch release string without its local build tag: ``2.13.0+cpu`` -> ``2.13.0``."""
    return torch_version_string().split("+")[0]


@functools.cache
def has_quantized_engines() -> bool:
    """True while this torch still ships its quantized CPU kernels (fbgemm, qnnpack, ...)."""
    import torch

    try:
        return bool(torch.backends.quantized.supported_engines) and hasattr(
            torch.ops.quantized, "linear"
        )
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def has_torch_ao_quantized_modules() -> bool:
    """True while ``torch.ao.nn.quantized`` can be imported (the ``torch_ao`` subject needs it)."""
    return importlib.util.find_spec("torch.ao.nn.quantized") is not None


@functools.cache
def has_torchscript() -> bool:
    import torch

    return hasattr(torch, "jit") and hasattr(torch.jit, "script")


@functools.cache
def has_torch_export() -> bool:
    import torch

    return hasattr(torch, "export") and hasattr(torch.export, "export")


class FeatureUnavailable(RuntimeError):
    """Raised when this torch release lacks a feature; the message names feature and release."""

    def __init__(self, feature: str, detail: str = "") -> None:
        msg = f"{feature} is not available on torch {torch_version_string()}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)
        self.feature = feature


@contextlib.contextmanager
def expected_fx_constant_warnings() -> Iterator[None]:
    """Silence torch 2.6's get_attr-on-a-plain-tensor warnings (wrap ``graph.lint()`` in it)."""
    with warnings.catch_warnings():
        for pattern in _FX_CONSTANT_NOISE:
            warnings.filterwarnings("ignore", message=pattern, category=UserWarning)
        yield


def export_module(
    model: torch.nn.Module, example_inputs: tuple, **kwargs: object
) -> torch.fx.GraphModule:
    """``torch.export.export(model, example_inputs, strict=False).module()`` on every release.

    ``strict`` is pinned because its default changed: torch 2.6 traces with TorchDynamo
    (``strict=True``, nodes also carry ``example_value``/``source_fn_stack`` meta), torch 2.13
    and 2.14 without (``strict=False``). Pinning it gives the same graph on every release.
    """
    import torch

    kwargs.setdefault("strict", False)
    program = torch.export.export(model, example_inputs, **kwargs)  # type: ignore[arg-type]
    with expected_fx_constant_warnings():
        return program.module()  # type: ignore[return-value]


# Op objects torch retired when it refreshed their packet; kept alive so their ids stay unique.
_RETIRED_OPS: list[object] = []


@functools.cache
def keep_jit_builtins_stable() -> int:
    """Work around a torch bug that makes ``torch.jit.script`` fail at random; returns how many
    stale entries it dropped.

    ``torch.jit._builtins`` maps ``id(function)`` to a builtin op name, and ``torch._ops``
    registers each op object of an ``OpOverloadPacket`` there. Defining a new overload of an op
    whose packet already exists (``torch.ao.quantization.fx._decomposed`` does it for
    ``quantized_decomposed::quantize_per_tensor`` and friends while it is imported) makes
    ``torch._ops._refresh_packet`` replace the packet's op object: the old one is freed, its id
    stays in the table. CPython hands that address to the next object of the same size (72
    bytes: a 4-tuple such as ``nn.Conv2d._reversed_padding_repeated_twice``), and scripting then
    resolves the tuple as the builtin op: "builtin cannot be used as a value". Whether the
    address is reused depends on the allocation history, so regeneration failed about one run in
    eight under load. From the first call on, retired op objects are kept alive (their ids
    cannot be reused), and the stale entries already in the table are dropped. Idempotent.
    """
    import torch

    ops = getattr(torch, "_ops", None)
    refresh = getattr(ops, "_refresh_packet", None)
    if refresh is None:  # a torch without packet refreshes has nothing to repair
        return 0

    def refresh_keeping_retired(packet: object) -> None:
        _RETIRED_OPS.append(packet._op)  # type: ignore[attr-defined]
        refresh(packet)

    ops._refresh_packet = refresh_keeping_retired  # type: ignore[union-attr]
    return drop_stale_jit_builtins()


def drop_stale_jit_builtins() -> int:
    """Remove the builtin-table entries of op objects torch already retired (see
    :func:`keep_jit_builtins_stable`); returns how many.

    An entry is stale when its name is that of a live packet but its id is neither the packet's
    current op object, nor a retired one kept alive, nor any function torch itself registers
    (``torch.jit._builtins._builtin_ops``, and module-level callables of torch such as
    ``torch.jit._async.wait``).
    """
    import torch
    from torch.jit import _builtins

    table = _builtins._get_builtin_table()
    current: dict[str, set[int]] = {}
    for namespace in list(vars(torch.ops).values()):
        for packet in list(vars(namespace).values()) if hasattr(namespace, "__dict__") else ():
            op, name = getattr(packet, "_op", None), getattr(packet, "_qualified_op_name", None)
            if op is not None and isinstance(name, str):
                current.setdefault(name, set()).add(id(op))
    known = {id(fn) for fn, _ in _builtins._builtin_ops} | {id(op) for op in _RETIRED_OPS}
    for name, module in list(sys.modules.items()):
        if module is not None and name.partition(".")[0] == "torch":
            known.update(id(v) for v in list(vars(module).values()) if callable(v))
    stale = [
        key
        for key, name in list(table.items())
        if name in current and key not in current[name] and key not in known
    ]
    for key in stale:
        del table[key]
    return len(stale)


def emulates_lower_cpu(engine: str) -> bool:
    """Whether :func:`lower_cpu_emulation` changes anything for ``engine`` in this process."""
    from harness import isa

    me = isa.detect()
    vnni = isa.rank("avx512_vnni")
    return engine == "int_mm" and isa.rank(me.cpu) >= vnni and isa.rank(me.cls) < vnni


@contextlib.contextmanager
def lower_cpu_emulation(engine: str) -> Iterator[None]:
    """Within the block, compute as a real CPU of this process's (capped) ISA class would, where
    capping the libraries is not enough (harness.isa).

    ``torch._int_mm`` dispatches on the CPU itself, not on the capped libraries: on a CPU with
    AVX512-VNNI it runs oneDNN, and oneDNN capped below VNNI forms int8 pair sums in a saturating
    int16, while a real AVX2 CPU runs torch's exact loop. So, for the ``int_mm`` engine in a
    process capped below VNNI on such a CPU, ``torch._int_mm`` runs with oneDNN switched off,
    which is that loop. (Graphs of the int_mm engine hold no other op that oneDNN serves.)
    Elsewhere the block runs unchanged.
    """
    if not emulates_lower_cpu(engine):
        yield
        return
    import torch

    with warnings.catch_warnings():
        # torch notes, on switching oneDNN, that its TF32 path exists only for Intel GPUs
        warnings.filterwarnings("ignore", message=r"TF32 acceleration on top of oneDNN")
        with torch.backends.mkldnn.flags(enabled=False):
            yield
