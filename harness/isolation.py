"""Worker processes: run a function in a child of a long-lived "zygote" interpreter, so a native
crash or a hang is that task's failure, and so work can run under another environment (an ISA
cap, harness.isa, which the kernel libraries read only when a process starts).

A *zygote* is a fresh interpreter started once per environment (:func:`worker_command` builds
its command line and environment, the one place to extend start-up, e.g. with a sandbox). It
imports torch and harness, sets one intra-op thread and then only waits: it never runs a model
or autograd, so it has no thread pool and forking it is safe (forking a process that ran
autograd is not: torch 2.14 aborts in the child). For each task it forks one child, which
imports the task's module, calls the function and writes the result back; the zygote relays
the result, or what became of the child, to the caller.

Tasks are module-level functions (named by module and qualified name, so the zygote can import
them) with plain-data arguments and results: str, int, float, bool, None, tensors, and lists,
tuples and dicts of them, never live modules. Both directions are serialized with ``torch.save``
and read with ``torch.load(weights_only=True)``, so a task that handled a hostile golden cannot
make its caller run code. Outcomes of :func:`run`:

- the function returns: its value;
- the function raises: :class:`TaskError` carrying the exception type and message;
- the child dies from a signal (SIGABRT, SIGSEGV, ...) or exits without a result:
  :class:`NativeCrash` naming the signal or status;
- the child exceeds its timeout (:data:`LOAD_TIMEOUT` by default): it is killed,
  :class:`TaskTimeout`.

Tasks that can run code from a golden (:func:`needs_sandbox`: TorchScript, ``package``, a
case's trusted pickles) run with ``sandboxed=True``: the task child confines itself with
:mod:`harness.sandbox` first, with a scratch folder of its own that is deleted afterwards
(``QBC_ISOLATION=0`` does not change that); :func:`confinement` says how a load is confined, or
skips it where no sandbox works and the store is not trusted.

A zygote that dies or stops answering is replaced at the next task; the task it was running
fails with :class:`NativeCrash` / :class:`TaskTimeout`. ``QBC_ISOLATION=0`` (or no ``os.fork``)
runs tasks that need no other environment in the calling process instead (no crash protection);
a task that needs another environment (an ISA cap) still gets a worker, or, without
``os.fork``, fails with :class:`IsolationUnavailable`.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import enum
import importlib
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from harness import recorded_warnings

#: seconds one task may take before its child is killed (``QBC_LOAD_TIMEOUT``)
LOAD_TIMEOUT = float(os.environ.get("QBC_LOAD_TIMEOUT", 300))
#: extra seconds the caller waits for a zygote's answer beyond the task's own timeout before it
#: declares the zygote itself hung and replaces it
ZYGOTE_GRACE = 30.0
#: seconds a zygote may take to start (import torch and harness) and report ready
START_TIMEOUT = float(os.environ.get("QBC_WORKER_START_TIMEOUT", 300))


class TaskProblem(Exception):
    """Base of the outcomes of a task that are not a value."""


class TaskError(TaskProblem):
    """The task raised; ``type_name`` and ``message`` are the exception's."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message = type_name, message


class NativeCrash(TaskProblem):
    """The task's process died (signal, or exit without a result)."""


class TaskTimeout(TaskProblem):
    """The task did not finish within its timeout and was killed."""


class IsolationUnavailable(TaskProblem):
    """A task needs a worker (another environment) but isolation is off or impossible here."""


# Names of the first version, kept for callers written against it.
IsolatedLoadProblem = TaskProblem
LoadError = TaskError
LoadTimeout = TaskTimeout


class ProblemKind(enum.Enum):
    """What kind of failure a :class:`TaskProblem` is, for messages (see :func:`describe`)."""

    NATIVE_CRASH = "native crash while loading"
    TIMEOUT = "load took too long"
    REFUSED_CODE = "refused to run code from the golden"
    LOAD_ERROR = "could not load the golden file"
    UNAVAILABLE = "no worker process for this check"


def enabled() -> bool:
    """Whether tasks run in worker processes (``QBC_ISOLATION`` is not ``0`` and fork exists)."""
    return hasattr(os, "fork") and os.environ.get("QBC_ISOLATION", "1") != "0"


def needs_isolation(fmt: Any, ctx: Any) -> bool:
    """Whether reading ``fmt`` runs in a worker: loaders that parse the file in C++ beyond
    torch.load's weights-only path (TorchScript, torch.export, torch.package) or unpickle it
    fully. ``torch.load(weights_only=True)`` (a Python unpickler over a bounds-checked zip
    reader, after :func:`harness.integrity.inspect_zip`) and safetensors stay in process.
    ``QBC_ISOLATION=all`` isolates every load."""
    if os.environ.get("QBC_ISOLATION") == "all":
        return True
    return not fmt.weights_only or (ctx is not None and not ctx.weights_only)


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


# ------------------------------------------------------------------------------- encoding


def _encode(value: Any) -> bytes:
    import torch

    from harness.compat import expected_torch_deprecations

    buf = io.BytesIO()
    with expected_torch_deprecations():  # results may hold torch.ao quantized tensors
        torch.save(value, buf)
    return buf.getvalue()


def _decode(data: bytes) -> Any:
    import torch

    from harness.compat import expected_torch_deprecations

    with expected_torch_deprecations():  # results may hold torch.ao quantized tensors
        return torch.load(io.BytesIO(data), weights_only=True)


def task_name(fn: Callable[..., Any]) -> str:
    """``module:qualname`` of a module-level function (TypeError for anything else)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise TypeError(
            f"{fn!r} is not a module-level function of an importable module; a worker can only "
            "run functions it can import by name"
        )
    return f"{module}:{qualname}"


def resolve(name: str) -> Callable[..., Any]:
    """The function ``module:qualname`` names."""
    module_name, _, qualname = name.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------------------- framing


def _write_frame(fd: int, header: dict[str, Any], payload: bytes = b"") -> None:
    head = json.dumps({**header, "size": len(payload)}).encode() + b"\n"
    view = memoryview(head + payload)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float | None) -> tuple[dict[str, Any], bytes]:
    head = bytearray()
    while not head.endswith(b"\n"):
        head += _read_exact(fd, 1, deadline)
        if len(head) > 1 << 16:
            raise EOFError("frame header too long")
    header = json.loads(head)
    return header, _read_exact(fd, int(header["size"]), deadline)


# ------------------------------------------------------------------------------- zygote side


def _child(name: str, payload: bytes, w: int, scratch: str | None) -> None:
    """Body of a forked task child; never returns (os._exit), whatever happens."""
    code = 0
    try:
        _die_with_parent()
        if scratch is not None:
            from harness import sandbox

            sandbox.confine(Path(scratch))  # from here on this process is sandboxed
        # The caller's check records the warnings of this task (harness.recorded_warnings).
        with recorded_warnings.recording() as caught:
            try:
                path, setup, args = _decode(payload)
                for entry in path:
                    if entry not in sys.path:
                        sys.path.append(entry)
                for setup_name, setup_args in setup:
                    resolve(setup_name)(*setup_args)
                result: tuple[Any, ...] = ("ok", resolve(name)(*args))
            except BaseException as exc:  # everything the task raised is reported, not raised
                result = ("error", type(exc).__name__, str(exc))
        out = _encode((*result, [r.as_dict() for r in caught]))
        view = memoryview(out)
        while view:
            view = view[os.write(w, view) :]
    except BaseException:
        code = 70  # could not even report: the caller says so
    finally:
        os._exit(code)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a zygote must not outlive its
    caller, nor a task child its zygote); elsewhere the closed pipes end them."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run_forked(
    name: str, payload: bytes, timeout: float, scratch: str | None
) -> tuple[dict[str, Any], bytes]:
    """In the zygote: fork a child for one task, collect its result or its fate."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(r)
        _child(name, payload, w, scratch)
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
            if not select.select([r], [], [], left)[0]:
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
        return {"status": "timeout", "timeout": timeout}, b""
    if os.WIFSIGNALED(status):
        return {"status": "signal", "signal": os.WTERMSIG(status)}, b""
    code = os.WEXITSTATUS(status)
    if code != 0 or not chunks:
        return {"status": "exit", "code": code}, b""
    return {"status": "done"}, b"".join(chunks)


def zygote_main(requests: int, responses: int, warm: list[str]) -> None:
    """The zygote's loop: warm up, say ready, then one forked child per request until EOF."""
    import faulthandler

    import torch

    import harness  # noqa: F401  (honours QBC_ISA_CAP; the caps are in our environment already)

    # Import (never run) what the tasks will use, once, so each child starts warm.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in warm:
            with contextlib.suppress(Exception):  # a task that needs it will say what is wrong
                if ":" in name:
                    resolve(name)()
                else:
                    importlib.import_module(name)

    # The caller reports crashes; a child's faulthandler dump of this stack would only confuse.
    faulthandler.disable()
    _die_with_parent()
    torch.set_num_threads(1)  # no intra-op pool: nothing to lose across fork
    _write_frame(responses, {"status": "ready", "pid": os.getpid()})
    while True:
        try:
            header, payload = _read_frame(requests, None)
        except EOFError:
            return
        _preload(header.get("preload") or ())
        reply, data = _run_forked(
            header["task"], payload, float(header["timeout"]), header.get("scratch")
        )
        try:
            _write_frame(responses, reply, data)
        except BrokenPipeError:
            return


def _preload(modules: Iterable[str]) -> None:
    """In the zygote: import (never run) modules a task asked for, once, so every later child
    forked for such a task starts with them imported (see :func:`run_task`'s ``preload``)."""
    for name in modules:
        if name in sys.modules:
            continue
        with warnings.catch_warnings(), contextlib.suppress(Exception):
            warnings.simplefilter("ignore")  # a task that needs it will say what is wrong
            importlib.import_module(name)


# ------------------------------------------------------------------------------- caller side


def worker_command(env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The argv prefix and full environment a zygote starts with, given the extra variables
    ``env`` (e.g. harness.isa.cap_environment). The one place a zygote's start-up is built:
    extend it here (a sandbox wrapper goes in front of the argv). The fd numbers of the two
    pipes are appended by :class:`Zygote`."""
    # Tasks see this process's sys.path too (plug-in subjects, test modules): each request
    # carries it, so the command line stays the interpreter's own.
    return [sys.executable, "-m", "harness.isolation", ",".join(WARM)], {**os.environ, **env}


#: modules a zygote imports, or ``module:function`` it calls (no arguments), before it says
#: ready (higher layers add theirs with :func:`warm`)
WARM: list[str] = []


def warm(name: str) -> None:
    """Have every zygote started from now on import module ``name`` (or call the zero-argument
    function ``module:function``) while it warms up."""
    if name not in WARM:
        WARM.append(name)


class Zygote:
    """One zygote process and the two pipes to it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        req_r, self.req_w = os.pipe()
        self.resp_r, resp_w = os.pipe()
        argv, full_env = worker_command(self.env)
        self.proc = subprocess.Popen(
            [*argv, str(req_r), str(resp_w)],
            env=full_env,
            pass_fds=(req_r, resp_w),
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else None,
            close_fds=True,
        )
        os.close(req_r)
        os.close(resp_w)
        try:
            header, _ = _read_frame(self.resp_r, time.monotonic() + START_TIMEOUT)
        except (EOFError, TimeoutError, ValueError) as exc:
            self.close()
            raise NativeCrash(
                f"the worker process for environment {self.env or '(as is)'} did not start "
                f"({type(exc).__name__}; exit status {self.proc.poll()})"
            ) from None
        if header.get("status") != "ready":
            self.close()
            raise NativeCrash(f"the worker process answered {header} instead of ready")

    def request(
        self,
        name: str,
        payload: bytes,
        timeout: float,
        scratch: str | None = None,
        preload: tuple[str, ...] = (),
    ) -> tuple[dict[str, Any], bytes]:
        header = {"task": name, "timeout": timeout, "scratch": scratch, "preload": list(preload)}
        _write_frame(self.req_w, header, payload)
        return _read_frame(self.resp_r, time.monotonic() + timeout + ZYGOTE_GRACE)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        for fd in (self.req_w, self.resp_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


_ZYGOTES: dict[tuple[tuple[str, str], ...], Zygote] = {}
#: calls every task child makes before its task (:func:`setup_in_workers`)
_SETUP: list[tuple[str, tuple[Any, ...]]] = []
_LOCK = threading.Lock()


def _key(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(env.items()))


def _zygote(env: Mapping[str, str]) -> Zygote:
    key = _key(env)
    z = _ZYGOTES.get(key)
    if z is None or not z.alive():
        if z is not None:
            z.close()
        z = _ZYGOTES[key] = Zygote(env)
    return z


def _discard(env: Mapping[str, str]) -> None:
    z = _ZYGOTES.pop(_key(env), None)
    if z is not None:
        with contextlib.suppress(Exception):
            z.proc.kill()
        z.close()


def _forget_zygotes_in_child() -> None:
    # A forked copy of this process must not talk to its parent's zygotes (their pipes are
    # shared); it starts its own when it needs one.
    for z in _ZYGOTES.values():
        for fd in (z.req_w, z.resp_r):
            with contextlib.suppress(OSError):
                os.close(fd)
    _ZYGOTES.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_zygotes_in_child)


@atexit.register
def shutdown() -> None:
    """Stop every zygote of this process (they also exit on their own when it goes away)."""
    for key in list(_ZYGOTES):
        z = _ZYGOTES.pop(key)
        z.close()


def zygote_pids() -> dict[tuple[tuple[str, str], ...], int]:
    """pid of each running zygote, keyed by its extra environment (for tests and diagnosis)."""
    return {k: z.proc.pid for k, z in _ZYGOTES.items() if z.alive()}


@dataclasses.dataclass(frozen=True)
class TaskResult:
    value: Any
    #: warnings the task raised (harness.recorded_warnings); already replayed into the
    #: caller's recording, if any
    warnings: tuple[recorded_warnings.Recorded, ...] = ()


def run_task(
    fn: Callable[..., Any],
    *args: Any,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    sandboxed: bool = False,
    preload: tuple[str, ...] = (),
) -> TaskResult:
    """``fn(*args)`` in a child of the zygote for ``env`` (extra environment variables; None or
    empty: this process's own environment), confined by :func:`harness.sandbox.confine` first
    when ``sandboxed``; see the module docstring for the outcomes. ``preload``: modules the
    zygote imports (never runs) before it forks the child, once, when a task needs modules whose
    first import is slow (each child would otherwise import them again; the zygote keeps them
    for every later task)."""
    env = dict(env or {})
    name = task_name(fn)
    timeout = LOAD_TIMEOUT if timeout is None else timeout
    if env and not hasattr(os, "fork"):
        raise IsolationUnavailable(
            f"this task needs a worker process started with {env}, and this platform has no "
            "fork for worker processes"
        )
    if not env and not sandboxed and not enabled():
        try:
            return TaskResult(fn(*args))  # warnings take their usual course here
        except Exception as exc:
            raise TaskError(type(exc).__name__, str(exc)) from exc
    payload = _encode((list(sys.path), list(_SETUP), list(args)))
    scratch = tempfile.mkdtemp(prefix="qbc-sandbox-") if sandboxed else None
    try:
        with _LOCK:
            return _finish(_request(env, name, payload, timeout, scratch, preload), timeout)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _request(
    env: dict[str, str],
    name: str,
    payload: bytes,
    timeout: float,
    scratch: str | None,
    preload: tuple[str, ...] = (),
) -> tuple[dict[str, Any], bytes]:
    zygote = _zygote(env)
    try:
        return zygote.request(name, payload, timeout, scratch, preload)
    except TimeoutError:
        _discard(env)
        raise TaskTimeout(
            f"the worker process did not answer within {timeout:g} s and was replaced"
        ) from None
    except (EOFError, OSError, ValueError) as exc:
        _discard(env)
        raise NativeCrash(
            f"the worker process died while running the task ({type(exc).__name__}); it was "
            "replaced"
        ) from None


def _finish(answer: tuple[dict[str, Any], bytes], timeout: float) -> TaskResult:
    """The outcome of a task from the zygote's reply (module docstring)."""
    reply, data = answer
    status = reply.get("status")
    if status == "timeout":
        raise TaskTimeout(f"the load did not finish within {timeout:g} s and was killed")
    if status == "signal":
        sig = int(reply["signal"])
        try:
            signame = signal.Signals(sig).name
        except ValueError:
            signame = f"signal {sig}"
        raise NativeCrash(
            f"the loader crashed natively ({signame}); the run continued because the load ran "
            "in a separate process"
        )
    if status != "done":
        raise NativeCrash(
            f"the loader process exited with status {reply.get('code')} without a result"
        )
    try:
        result = _decode(data)
    except Exception as exc:  # the child sent something a weights-only load refuses
        raise TaskError(type(exc).__name__, str(exc)) from None
    caught = tuple(recorded_warnings.Recorded.from_dict(d) for d in result[-1])
    recorded_warnings.replay(caught)
    if result[0] == "error":
        raise TaskError(result[1], result[2])
    return TaskResult(result[1], caught)


def run(
    fn: Callable[..., Any],
    *args: Any,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    sandboxed: bool = False,
    preload: tuple[str, ...] = (),
) -> Any:
    """``fn(*args)`` in a worker (see :func:`run_task`); returns the value only."""
    return run_task(fn, *args, env=env, timeout=timeout, sandboxed=sandboxed, preload=preload).value


def call(
    fn: Callable[..., Any], *args: Any, timeout: float | None = None, sandboxed: bool = False
) -> Any:
    """``fn(*args)`` in a worker with this process's own environment."""
    return run(fn, *args, timeout=timeout, sandboxed=sandboxed)


@contextlib.contextmanager
def setup_in_workers(fn: Callable[..., Any], *args: Any) -> Iterator[None]:
    """While the block runs, every task child first calls ``fn(*args)`` (a module-level function,
    plain-data arguments): for state this process changed at run time that a task must see too,
    e.g. a test's patched case table. Workers are fresh interpreters and do not inherit it."""
    call = (task_name(fn), tuple(args))
    _SETUP.append(call)
    try:
        yield
    finally:
        _SETUP.remove(call)


@contextlib.contextmanager
def workers() -> Iterator[None]:
    """Stop the zygotes started inside the block when it ends (for short-lived callers)."""
    before = set(_ZYGOTES)
    try:
        yield
    finally:
        for key in set(_ZYGOTES) - before:
            _ZYGOTES.pop(key).close()


def describe(problem: TaskProblem) -> tuple[ProblemKind, str]:
    """(kind, detail) of a failed task, for the golden's failure message (the kind's value is
    the headline)."""
    if isinstance(problem, NativeCrash):
        return ProblemKind.NATIVE_CRASH, str(problem)
    if isinstance(problem, TaskTimeout):
        return ProblemKind.TIMEOUT, str(problem)
    if isinstance(problem, IsolationUnavailable):
        return ProblemKind.UNAVAILABLE, str(problem)
    assert isinstance(problem, TaskError)
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


if __name__ == "__main__":  # python -m harness.isolation <warm,...> <requests fd> <responses fd>
    zygote_main(int(sys.argv[2]), int(sys.argv[3]), [n for n in sys.argv[1].split(",") if n])
