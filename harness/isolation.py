"""Run a risky golden load in a child process, so a native crash or a hang is that golden's
failure instead of the end of the run.

TorchScript, torch.export and torch.package parse files in C++; a corrupt file can abort or
segfault the process, and a hostile one can make a loader spin. :func:`load` forks the runner
(cheap: the child shares torch, the case cache and the engine setting copy-on-write), reads and
runs the artifact in the child, and sends the result back serialized with ``torch.save``; the
parent reads it with ``torch.load(weights_only=True)``, so nothing the child returns can execute
code in the runner. Outcomes:

- the child returns a value: the parent gets it, as if it had loaded the file itself;
- the child raises: :class:`LoadError` carrying the exception type and message;
- the child dies from a signal (SIGABRT, SIGSEGV, ...): :class:`NativeCrash` naming the signal;
- the child exceeds :data:`LOAD_TIMEOUT` seconds: it is killed, :class:`LoadTimeout`.

Where ``os.fork`` does not exist, or ``QBC_ISOLATION=0``, the read runs in process (no crash
protection; the runner says nothing different, the failure just takes the run down).

Loads that can run code from the golden (:func:`needs_sandbox`: TorchScript, ``package``, a
case's trusted pickles) always run in a child confined by :mod:`harness.sandbox` first, with a
scratch folder of its own that is deleted afterwards (``QBC_ISOLATION=0`` does not change
that). Where no sandbox works, they are skipped (:class:`harness.outcomes.GoldenSkip` naming
the reason) unless the user trusts the store (``--trust``); :func:`confinement` says which.
"""

from __future__ import annotations

import enum
import io
import os
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import recorded_warnings

#: seconds one isolated load may take before it is killed (``QBC_LOAD_TIMEOUT``)
LOAD_TIMEOUT = float(os.environ.get("QBC_LOAD_TIMEOUT", 300))


class IsolatedLoadProblem(Exception):
    """Base of the outcomes of an isolated load that are not a value."""


class LoadError(IsolatedLoadProblem):
    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message = type_name, message


class NativeCrash(IsolatedLoadProblem):
    pass


class LoadTimeout(IsolatedLoadProblem):
    pass


def enabled() -> bool:
    return hasattr(os, "fork") and os.environ.get("QBC_ISOLATION", "1") != "0"


def needs_isolation(fmt: Any, ctx: Any) -> bool:
    """Whether reading ``fmt`` runs in a child: loaders that parse the file in C++ beyond
    torch.load's weights-only path (TorchScript, torch.export, torch.package) or unpickle it
    fully. ``torch.load(weights_only=True)`` (a Python unpickler over a bounds-checked zip
    reader, after :func:`harness.integrity.inspect_zip`) and safetensors stay in process: a fork
    per check costs ~50 ms, which over the whole store is minutes. ``QBC_ISOLATION=all``
    isolates every load."""
    if os.environ.get("QBC_ISOLATION") == "all":
        return True
    return not fmt.weights_only or (ctx is not None and not ctx.weights_only)


def _encode(value: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()


def needs_sandbox(fmt: Any, ctx: Any) -> bool:
    """Whether reading ``fmt`` can run code stored in the golden: a format that runs code on
    load, or a case's trusted (fully unpickled) load."""
    return bool(fmt.runs_code_on_load) or (ctx is not None and not ctx.weights_only)


def confinement(code_capable: bool) -> str | None:
    """How a load is confined, as results record it: None when it can run no code, the
    sandbox's description, or ``"trusted: ..."`` when the user trusts the store and no sandbox
    works here; GoldenSkip when neither."""
    from harness import sandbox
    from harness.outcomes import GoldenSkip

    if not code_capable:
        return None
    box = sandbox.available()
    if box is not None:
        return str(box)
    if sandbox.trusted():
        return f"trusted: no sandbox ({sandbox.unavailable_reason()})"
    raise GoldenSkip(
        "this format can run code stored in the golden and no sandbox works on this machine "
        f"({sandbox.unavailable_reason()}); pass --trust to load it anyway"
    )


def _child(fn: Callable[..., Any], args: tuple[Any, ...], w: int, scratch: str | None) -> None:
    """Body of the forked child; never returns (os._exit), whatever happens."""
    code = 0
    try:
        if scratch is not None:
            from harness import sandbox

            sandbox.confine(Path(scratch))  # from here on this process is sandboxed

        import faulthandler

        import torch

        # The parent reports the crash (signal, golden, file); a second traceback of the
        # parent's whole stack from the child would only confuse the run's output.
        faulthandler.disable()

        # The parent's OpenMP pool does not survive fork; one thread keeps the child from
        # waiting on workers that do not exist (what torch's DataLoader workers do too).
        torch.set_num_threads(1)
        # The parent's check records the warnings of this load (harness.recorded_warnings).
        with recorded_warnings.recording() as caught:
            try:
                result: tuple[Any, ...] = ("ok", fn(*args))
            except BaseException as exc:  # everything the load raised is reported, not re-raised
                result = ("error", type(exc).__name__, str(exc))
        payload = _encode((*result, [r.as_dict() for r in caught]))
        view = memoryview(payload)
        while view:
            view = view[os.write(w, view) :]
    except BaseException:
        code = 70  # could not even report: the parent says so
    finally:
        os._exit(code)


def call(
    fn: Callable[..., Any], *args: Any, timeout: float | None = None, sandboxed: bool = False
) -> Any:
    """``fn(*args)`` in a forked child (confined by :func:`harness.sandbox.confine` when
    ``sandboxed``); see the module docstring for the outcomes."""
    if not sandboxed and not enabled():
        try:
            return fn(*args)
        except Exception as exc:
            raise LoadError(type(exc).__name__, str(exc)) from exc
    scratch = tempfile.mkdtemp(prefix="qbc-sandbox-") if sandboxed else None
    try:
        return _call_forked(fn, args, LOAD_TIMEOUT if timeout is None else timeout, scratch)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _call_forked(
    fn: Callable[..., Any], args: tuple[Any, ...], timeout: float, scratch: str | None
) -> Any:
    import torch

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(r)
        _child(fn, args, w, scratch)
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if timed_out:
        raise LoadTimeout(f"the load did not finish within {timeout:g} s and was killed")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        raise NativeCrash(
            f"the loader crashed natively ({name}); the run continued because the load ran in "
            "a separate process"
        )
    code = os.WEXITSTATUS(status)
    if code != 0 or not chunks:
        raise NativeCrash(f"the loader process exited with status {code} without a result")
    result = torch.load(io.BytesIO(b"".join(chunks)), weights_only=True)
    recorded_warnings.replay(recorded_warnings.Recorded.from_dict(d) for d in result[-1])
    if result[0] == "error":
        raise LoadError(result[1], result[2])
    return result[1]


class ProblemKind(enum.Enum):
    """What kind of failed load a :class:`IsolatedLoadProblem` is; the runner words it."""

    NATIVE_CRASH = "native crash while loading"
    TIMEOUT = "load took too long"
    REFUSED_CODE = "refused to run code from the golden"
    LOAD_ERROR = "could not load the golden file"


def describe(problem: IsolatedLoadProblem) -> tuple[ProblemKind, str]:
    """(kind, detail) of a failed isolated load, for the golden's failure message."""
    if isinstance(problem, NativeCrash):
        return ProblemKind.NATIVE_CRASH, str(problem)
    if isinstance(problem, LoadTimeout):
        return ProblemKind.TIMEOUT, str(problem)
    assert isinstance(problem, LoadError)
    if problem.type_name == "UnpicklingError" and "Weights only load failed" in problem.message:
        # torch's message is long advice about weights_only=False; keep the reason line.
        reason = next(
            (
                line.strip()
                for line in problem.message.splitlines()
                if "GLOBAL" in line or "Unsupported" in line or "WeightsUnpickler" in line
            ),
            problem.message.splitlines()[0],
        )
        reason = reason.split(" Please use")[0]  # drop torch's advice to allowlist the global
        return (
            ProblemKind.REFUSED_CODE,
            "the file's pickle asks to call or build objects a weights-only load does not allow "
            f"(loaded with weights_only=True, nothing was executed): {reason}",
        )
    lines = [line for line in problem.message.strip().splitlines() if line.strip()]
    return ProblemKind.LOAD_ERROR, f"{problem.type_name}: {' '.join(lines[:3])[:600]}"


def load(fmt: Any, path: Any, ctx: Any) -> Any:
    """``fmt.read(path, ctx)``, in a sandboxed child when :func:`needs_sandbox` (skipped when no
    sandbox works and the store is not trusted), in a child when :func:`needs_isolation`; any
    failure is raised as an :class:`IsolatedLoadProblem` (the runner turns it into that
    golden's failure)."""
    if needs_sandbox(fmt, ctx):
        confined = confinement(True)
        sandboxed = confined is not None and not confined.startswith("trusted")
        if sandboxed or enabled():
            return call(fmt.read, path, ctx, sandboxed=sandboxed)
    if needs_isolation(fmt, ctx):
        return call(fmt.read, path, ctx)
    try:
        return fmt.read(path, ctx)
    except Exception as exc:
        raise LoadError(type(exc).__name__, str(exc)) from exc
