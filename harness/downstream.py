"""Downstream consumers: runtimes that read an exported (``.pt2``) golden the way their users do.

Exported goldens use the ``quantized_decomposed`` q/dq schema so that runtimes can consume them.
Each consumer here loads the stored program with the ``exported`` format's reader (never
``torch.export.load`` on an unchecked file), lowers it, runs it on the stored input and hands the
output back; the runner (:mod:`harness.verify`) judges it against the stored expected output with
the tolerance policy (rules matching ``consumer = "<name>"``, measured per runtime).

| consumer | what it does with the program |
| --- | --- |
| ``executorch`` | ``exir.to_edge`` -> ``to_executorch``; the ExecuTorch runtime with its portable and quantized kernels |
| ``executorch_xnnpack`` | ``exir.to_edge_transform_and_lower`` with the XNNPACK partitioner; also: nothing but the output stays outside the delegate |
| ``onnxruntime`` | ``torch.onnx.export(program, dynamo=True)`` (QuantizeLinear / DequantizeLinear), an onnxruntime CPU session |
| ``inductor`` | ``torch.compile(program.module())`` |
| ``inductor_freezing`` | the same with ``torch._inductor.config.freezing`` (weights folded, oneDNN qlinear / qconv) |

ExecuTorch and ONNX come with the ``downstream`` extra (``pip install torch==<pinned>
'qbc[downstream]'``); without them those checks are skipped with that command as the reason.
Inductor needs only torch and a C++ compiler.

Cost. Lowering is seconds per program, so the runner (a) runs each lowering in a forked child of
a worker process (harness.isolation's zygote, one per consumer: :func:`worker_environment`) that
imported the consumer and lowered one tiny program of its own first (:func:`warm_up`: the lazy
set-up of the lowering passes then happens once per worker, not once per golden, 5.3 -> 1.8 CPU s
per XNNPACK lowering; the warm-up itself costs 4-15 CPU s, Inductor's most: it compiles C++), (b)
under xdist, ``qbc verify`` runs every check of one consumer on one worker
(harness.cli.xdist_scope), so each consumer starts and warms up once per run, and (c)
remembers, per process, the output of every program it lowered under a content key (graph
code, signature, every tensor's bytes, the inputs): a golden whose ``.pt2`` loads to the same program as one already lowered (the same
case written by torch 2.13 and 2.14) is still loaded and keyed in its own child, and judged on
that lowering's output.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import isa

#: seconds one lowering may take before its child is killed (``QBC_DOWNSTREAM_TIMEOUT``):
#: a 150-node program takes ~100 s of Inductor compiling on a loaded 2-core machine
TIMEOUT = float(os.environ.get("QBC_DOWNSTREAM_TIMEOUT", 900))
#: the pip command a skipped downstream check names
INSTALL_HINT = "pip install torch=={torch} 'qbc[downstream]'"
#: node targets that may stay outside an XNNPACK delegate: the delegate call and the tuple
#: access to its outputs
_DELEGATE_PLUMBING = ("executorch_call_delegate", "getitem")


@dataclass(frozen=True)
class Consumer:
    """One downstream runtime (see the module docstring's table)."""

    name: str
    #: modules that must be importable (the ``downstream`` extra provides them)
    modules: tuple[str, ...]
    #: distributions whose versions are recorded with every result
    distributions: tuple[str, ...]
    #: lower(program, inputs) -> Lowered
    lower: Callable[[Any, tuple[Any, ...]], Lowered]
    description: str
    #: check that no op but the delegate's plumbing stays outside the delegate
    whole_graph_delegated: bool = False
    needs_cxx: bool = False


@dataclass
class Lowered:
    """What a lowering produced: its output on the stored input and, for delegating runtimes,
    how many delegates it made and which ops stayed outside them."""

    output: Any
    delegates: int | None = None
    outside: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        return {"output": self.output, "delegates": self.delegates, "outside": list(self.outside)}


# ------------------------------------------------------------------------------ lowerings


def _flat_inputs(inputs: tuple[Any, ...]) -> list[Any]:
    import torch.utils._pytree as pytree

    return pytree.tree_leaves(inputs)


def _structured(program: Any, flat_outputs: list[Any]) -> Any:
    """Runtime outputs (a flat list) in the program's own output structure."""
    import torch.utils._pytree as pytree

    return pytree.tree_unflatten(list(flat_outputs), program.call_spec.out_spec)


def _run_executorch(program: Any, edge: Any, inputs: tuple[Any, ...]) -> Any:
    import executorch.kernels.quantized  # noqa: F401  (quantized_decomposed out-variant kernels)
    from executorch.runtime import Runtime

    buffer = edge.to_executorch().buffer
    method = Runtime.get().load_program(buffer).load_method("forward")
    return _structured(program, method.execute(_flat_inputs(inputs)))


def _executorch(program: Any, inputs: tuple[Any, ...]) -> Lowered:
    from executorch.exir import EdgeCompileConfig, to_edge

    # quantized_decomposed ops are not core ATen: the edge verifier would refuse them, while
    # the portable runtime has kernels for them (executorch.kernels.quantized).
    edge = to_edge(program, compile_config=EdgeCompileConfig(_check_ir_validity=False))
    return Lowered(_run_executorch(program, edge, inputs))


def _executorch_xnnpack(program: Any, inputs: tuple[Any, ...]) -> Lowered:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    targets = [
        getattr(n.target, "__name__", str(n.target))
        for n in edge.exported_program().graph.nodes
        if n.op == "call_function"
    ]
    outside = tuple(sorted(t for t in targets if t not in _DELEGATE_PLUMBING))
    delegates = targets.count("executorch_call_delegate")
    return Lowered(_run_executorch(program, edge, inputs), delegates, outside)


def _onnxruntime(program: Any, inputs: tuple[Any, ...]) -> Lowered:
    import io

    import onnxruntime
    import torch

    onnx_program = torch.onnx.export(program, args=inputs, dynamo=True, verbose=False)
    buffer = io.BytesIO()
    onnx_program.save(buffer)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # tiny graphs; threads only add noise on a shared machine
    session = onnxruntime.InferenceSession(
        buffer.getvalue(), options, providers=["CPUExecutionProvider"]
    )
    feeds = {
        spec.name: x.numpy()
        for spec, x in zip(session.get_inputs(), _flat_inputs(inputs), strict=True)
    }
    outputs = [torch.from_numpy(o) for o in session.run(None, feeds)]
    return Lowered(_structured(program, outputs))


def _inductor(freezing: bool) -> Callable[[Any, tuple[Any, ...]], Lowered]:
    def lower(program: Any, inputs: tuple[Any, ...]) -> Lowered:
        import torch
        import torch._inductor.config as inductor_config

        torch._dynamo.reset()
        # compile_threads 1: no compile worker pool (its start-up costs more than these tiny
        # graphs take to compile, and a pool does not belong in a forked child)
        with inductor_config.patch(freezing=freezing, compile_threads=1), torch.no_grad():
            return Lowered(torch.compile(program.module())(*inputs))

    return lower


CONSUMERS: dict[str, Consumer] = {
    c.name: c
    for c in (
        Consumer(
            "executorch",
            ("executorch.exir", "executorch.runtime"),
            ("executorch",),
            _executorch,
            "ExecuTorch portable + quantized kernels (to_edge, to_executorch, runtime)",
        ),
        Consumer(
            "executorch_xnnpack",
            ("executorch.exir", "executorch.runtime", "executorch.backends.xnnpack"),
            ("executorch",),
            _executorch_xnnpack,
            "ExecuTorch XNNPACK delegate (to_edge_transform_and_lower, XnnpackPartitioner)",
            whole_graph_delegated=True,
        ),
        Consumer(
            "onnxruntime",
            ("onnx", "onnxscript", "onnxruntime"),
            ("onnx", "onnxscript", "onnxruntime"),
            _onnxruntime,
            "torch.onnx.export(dynamo=True) to QuantizeLinear/DequantizeLinear, onnxruntime CPU",
        ),
        Consumer(
            "inductor",
            ("torch._inductor",),
            (),
            _inductor(freezing=False),
            "torch.compile (Inductor, C++ CPU kernels)",
            needs_cxx=True,
        ),
        Consumer(
            "inductor_freezing",
            ("torch._inductor",),
            (),
            _inductor(freezing=True),
            "torch.compile with freezing (weights folded; oneDNN quantized linear / conv)",
            needs_cxx=True,
        ),
    )
}


def consumer_names() -> list[str]:
    return list(CONSUMERS)


def get_consumer(name: str) -> Consumer:
    try:
        return CONSUMERS[name]
    except KeyError:
        raise KeyError(
            f"unknown downstream consumer {name!r}; known: {', '.join(CONSUMERS)}"
        ) from None


# ------------------------------------------------------------------- availability, versions


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _cxx_compiler() -> str | None:
    return next(
        (c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c and shutil.which(c)),
        None,
    )


def unavailable_reason(name: str) -> str | None:
    """Why ``name``'s checks cannot run here (None: they can), with what to install."""
    from harness import compat

    consumer = get_consumer(name)
    missing = [m for m in consumer.modules if not _has_module(m)]
    if missing:
        return (
            f"downstream consumer {name} needs {', '.join(missing)}: install the downstream "
            f"extra, {INSTALL_HINT.format(torch=compat.torch_release())}"
        )
    if consumer.needs_cxx and _cxx_compiler() is None:
        return f"downstream consumer {name} needs a C++ compiler (g++, clang++ or $CXX)"
    if consumer.needs_cxx and isa.aten_capped():
        return (
            f"downstream consumer {name} compiles kernels for this CPU, which ATen capped below "
            f"it ({isa.ATEN}={os.environ.get(isa.ATEN)}) cannot run correctly: an emulation "
            "gap (harness.isa.aten_capped), checked on a real CPU of that class instead"
        )
    return None


def _distribution_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


@functools.cache
def consumer_info(name: str) -> dict[str, Any]:
    """The consumer as results rows record it: an id placed beside today's torch consumer
    (``torch-2.13.0_qbc-0.1.0+executorch_xnnpack-1.5.1``), and every version that matters."""
    from harness.manifest import producer_info

    consumer = get_consumer(name)
    info = producer_info()
    versions = {d: _distribution_version(d) for d in consumer.distributions}
    # the runtime's own release names it (onnxruntime's, not onnx's); Inductor is torch's
    label = consumer.name + (f"-{versions[consumer.distributions[-1]]}" if versions else "")
    return {**info, "id": f"{info['id']}+{label}", "runtime": consumer.name, "versions": versions}


# ------------------------------------------------------------------------ running a check


def program_key(program: Any, inputs: tuple[Any, ...]) -> str:
    """A content key of (program, inputs): equal keys lower to equal outputs.

    Covers the graph's code and signature and the bytes, dtype and shape of every parameter,
    buffer, constant and input; node metadata (debug handles, provenance) does not reach a
    runtime and is left out, so the same program written by two torch releases keys the same.
    """
    import torch

    h = hashlib.sha256()
    h.update(program.graph_module.code.encode())
    h.update(str(program.graph_signature).encode())
    tensors = {**program.state_dict, **program.constants}
    for i, x in enumerate(_flat_inputs(inputs)):
        tensors[f"<input {i}>"] = x
    for name in sorted(tensors):
        value = tensors[name]
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().contiguous()
            h.update(f"{t.dtype} {tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def lower_and_run(
    name: str, path: str, inputs: tuple[Any, ...], memo: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Load the ``.pt2`` at ``path`` with the exported format's reader, lower it for consumer
    ``name`` and run it on ``inputs`` (meant for a forked child: :func:`harness.isolation.call`).

    Returns plain data: the content key, and :meth:`Lowered.record` (taken from ``memo`` when
    the key is there). Warnings the runtimes raise travel back with the child's result and are
    recorded with the check (harness.isolation, harness.recorded_warnings).
    """
    from harness.formats import get_format

    program = get_format("exported").read(Path(path), None)
    key = program_key(program, inputs)
    if key in memo:
        return {**memo[key], "key": key, "memo": True}
    return {**get_consumer(name).lower(program, inputs).record(), "key": key, "memo": False}


def _warm_up_program() -> tuple[Any, tuple[Any, ...]]:
    """A one-linear q/dq program shaped like the flow's (quantize -> dequantize -> linear)."""
    import torch

    from harness.quant.decomposed import ensure_registered

    ensure_registered()

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            qd = torch.ops.quantized_decomposed
            x = qd.quantize_per_tensor(x, 0.05, 0, -128, 127, torch.int8)
            x = qd.dequantize_per_tensor(x, 0.05, 0, -128, 127, torch.int8)
            return self.linear(x)

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Tiny().eval()
    example = (torch.ones(1, 4),)
    return torch.export.export(model, example, strict=False), example


@functools.cache
def warm_up(name: str) -> None:
    """Import consumer ``name`` and lower one tiny program of our own in this process, once:
    forked children then start with the runtime's lazy set-up done. A failure here is not a
    golden's: the goldens' own checks will show it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program, example = _warm_up_program()
            get_consumer(name).lower(program, example)
    except Exception:
        pass


#: environment variable naming the consumer a worker process lowers for (harness.isolation keys
#: its zygotes by environment, so each consumer gets zygotes of its own, warmed up for it)
WARM_VARIABLE = "QBC_DOWNSTREAM_CONSUMER"


def worker_environment(name: str) -> dict[str, str]:
    """The extra environment of the worker processes that lower for consumer ``name``."""
    return {WARM_VARIABLE: name}


def warm_up_named_consumer() -> None:
    """In a zygote started with :func:`worker_environment`: warm that consumer up before the
    zygote forks any task child, so each lowering child starts with the runtime imported and
    its lazy set-up done (a zygote for other work does nothing here)."""
    name = os.environ.get(WARM_VARIABLE)
    if name:
        import torch

        torch.set_num_threads(1)  # no OpenMP pool before the zygote forks
        warm_up(name)


#: per-process memo of lowered outputs, per consumer: content key -> Lowered.record()
MEMO: dict[str, dict[str, dict[str, Any]]] = {}


def remember(name: str, result: dict[str, Any]) -> None:
    MEMO.setdefault(name, {})[result["key"]] = {
        k: result[k] for k in ("output", "delegates", "outside")
    }
