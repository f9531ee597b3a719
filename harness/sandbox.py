"""The sandbox code-capable golden loads run in: Landlock plus Linux namespaces, per task.

TorchScript (``scripted``, ``traced``), ``package`` and a case's trusted pickles can run code
stored in the golden: a TorchScript ``torch.from_file(PATH, True, N)`` creates files, a package
runs its interned Python. Such a load runs in a forked child that first calls :func:`confine`,
which makes that process (and anything it forks) unable to

- write anywhere but its own scratch folder (Landlock: read and execute everywhere, every
  other filesystem right only beneath the scratch folder; the working directory, ``TMPDIR`` and
  ``HOME`` point there; the folder is deleted after the task);
- reach a network (a new, empty network namespace; Landlock also denies TCP bind/connect where
  the kernel supports it, ABI 4+);
- signal, ptrace or read the memory of any process outside its own sandbox, the runner and
  the worker it was forked from included (Landlock domains restrict ptrace since ABI 1; signals
  and abstract UNIX sockets are scoped from ABI 6);
- outlive its task (a new PID namespace whose init is the task: when it ends, every process it
  started is killed; it also dies with its parent);
- use more than :data:`MEMORY_BYTES` of new address space, :data:`CPU_SECONDS` of CPU or write a
  file over :data:`FILE_BYTES` (rlimits).

Because it is applied per task, inside the forked child, a hostile golden cannot affect a later
golden's check: the worker it was forked from is out of its reach, and its scratch folder and
processes are gone before the next task starts.

Why Landlock and namespaces rather than bubblewrap: both are kernel features an unprivileged
process applies to itself after ``fork`` (a forked worker keeps torch imported; bubblewrap would
``exec`` a new interpreter per task, or wrap a whole worker and let its tasks share one sandbox),
no setuid helper is needed, and the only dependency is the pure-Python ``landlockpy`` from PyPI
(a CI without root cannot ``apt install bubblewrap``). :func:`available` proves the sandbox
works on this machine by confining a probe process and checking that it cannot write outside
its scratch folder nor open a network connection; where it does not work (no Landlock in the
kernel, user namespaces disabled, not Linux) :func:`unavailable_reason` says why and the runner
skips code-capable formats unless the user trusts the store (``--trust``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import signal
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

#: extra address space a confined task may map beyond what it inherited (``QBC_SANDBOX_MEMORY_MB``)
MEMORY_BYTES = int(os.environ.get("QBC_SANDBOX_MEMORY_MB", 4096)) << 20
#: CPU seconds a confined task may use (``QBC_SANDBOX_CPU_SECONDS``)
CPU_SECONDS = int(os.environ.get("QBC_SANDBOX_CPU_SECONDS", 300))
#: largest file a confined task may write into its scratch folder
FILE_BYTES = 64 << 20

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWPID = 0x20000000
_PR_SET_PDEATHSIG = 1


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be set up on this machine; the message says why."""


@dataclass(frozen=True)
class Sandbox:
    """What confines code-capable loads here, as recorded in results and reports."""

    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.name} ({self.detail})"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    if hasattr(os, "unshare"):  # Python 3.12+
        os.unshare(flags)
        return
    if _libc().unshare(ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _landlock(scratch: Path) -> int:
    """Restrict this process with Landlock; returns the kernel's ABI version."""
    import landlockpy as ll

    abi = ll.abi_version()
    if abi < 1:
        raise SandboxUnavailable("the kernel has no Landlock (Linux 5.13+ with it in the LSM list)")
    read = ll.AccessFS.READ_FILE | ll.AccessFS.READ_DIR | ll.AccessFS.EXECUTE
    every = ll.fs_for_abi(abi)
    scopes = ll.scope_for_abi(abi)
    with ll.Ruleset(handled_fs=every, handled_net=ll.net_for_abi(abi), scoped=scopes) as rules:
        rules.allow_path("/", read)
        rules.allow_path(scratch, every)
        for device in ("/dev/null", "/dev/zero"):
            if os.path.exists(device):
                rules.allow_path(device, ll.AccessFS.READ_FILE | ll.AccessFS.WRITE_FILE)
        rules.restrict()
    return abi


def confine(scratch: Path) -> None:
    """Sandbox the calling process as the module docstring says; call it in a forked child.

    Returns only in the confined process. Two processes stay behind it and never return: the
    caller, which waits for the new PID namespace's init, and that init, which waits for the
    confined process (an init ignores signals it has no handler for, so the task must not be
    the init, or its own ``abort()`` would not end it). How the task ended is passed up as the
    caller's own end: the same exit status, or death by the same signal (an exit status 128+N
    from the init means "died of signal N"). Raises SandboxUnavailable, before anything is
    confined, when a step cannot be taken.
    """
    scratch = Path(scratch)
    uid, gid = os.getuid(), os.getgid()
    try:
        _unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID)
        # Identity maps: files in the scratch folder get our own uid (without a map, creating
        # them fails), and nothing gains a privilege outside the namespace.
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    except OSError as exc:
        raise SandboxUnavailable(f"cannot create user, network and PID namespaces: {exc}") from None
    init = os.fork()
    if init:
        _mirror(init, as_signal=True)
    # PID 1 of the new namespace: dies with its parent, and takes every process in it along
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    task = os.fork()
    if task:
        _mirror(task, as_signal=False)
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _landlock(scratch)
    used = _address_space()
    resource.setrlimit(resource.RLIMIT_AS, (used + MEMORY_BYTES, used + MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.chdir(scratch)
    os.environ.update(TMPDIR=str(scratch), HOME=str(scratch))
    tempfile.tempdir = str(scratch)


def _mirror(pid: int, as_signal: bool) -> NoReturn:
    """Wait for ``pid`` and end the same way: by its signal when ``as_signal`` (else exit
    status 128+N), or with its exit status (128+N again meaning signal N)."""
    code = 70
    try:
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            sig, code = os.WTERMSIG(status), 128 + os.WTERMSIG(status)
        else:
            code = os.WEXITSTATUS(status)
            sig = code - 128 if code > 128 else 0
        if as_signal and sig:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
    finally:
        os._exit(code)


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------ availability


def _probe(scratch: Path, outside: Path) -> int:
    """In a forked child: confine, then check; the exit code says what failed (0: all held)."""
    try:
        confine(scratch)
    except SandboxUnavailable:
        return 3
    (scratch / "inside").write_text("ok")  # the scratch folder stays writable
    try:
        outside.write_text("escaped")
        return 4
    except OSError:
        pass
    try:
        with socket.create_connection(("1.1.1.1", 53), timeout=2):
            return 5
    except OSError:
        pass
    return 0


@functools.cache
def _status() -> tuple[Sandbox | None, str]:
    if not hasattr(os, "fork") or not os.path.exists("/proc/self/uid_map"):
        return None, "not Linux: no Landlock or namespaces to confine code-capable loads"
    try:
        import landlockpy as ll
    except ImportError:
        return None, "the landlockpy package is not installed (pip install landlockpy)"
    abi = ll.abi_version()
    if abi < 1:
        return None, "this kernel has no Landlock (needs Linux 5.13+ with landlock in its LSMs)"
    with tempfile.TemporaryDirectory(prefix="qbc-sandbox-probe-") as tmp:
        scratch, outside = Path(tmp) / "scratch", Path(tmp) / "outside"
        scratch.mkdir()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 70
            try:
                code = _probe(scratch, outside)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        reasons = {
            3: "user, network and PID namespaces cannot be created (unprivileged user "
            "namespaces disabled?)",
            4: "a confined probe could still write outside its scratch folder",
            5: "a confined probe could still open a network connection",
        }
        if code != 0:
            return None, reasons.get(code, f"the sandbox probe failed (exit status {code})")
        if outside.exists() or not (scratch / "inside").exists():
            return None, "the sandbox probe did not behave as confined"
    scopes = "signals and abstract sockets scoped" if abi >= 6 else "signals not scoped (ABI < 6)"
    return (
        Sandbox(
            "landlock+namespaces",
            f"Landlock ABI {abi}, user/network/PID namespaces, {scopes}; landlockpy {ll.__version__}",
        ),
        "",
    )


def available() -> Sandbox | None:
    """The sandbox of this machine, proven by a probe (cached per process); None if none."""
    return _status()[0]


def unavailable_reason() -> str:
    """Why :func:`available` is None ("" when a sandbox is available)."""
    return _status()[1]


def trusted() -> bool:
    """The user trusts the store (``--trust``): code-capable loads run without a sandbox
    when none is available, and the report lists them."""
    return os.environ.get("QBC_TRUST", "") not in ("", "0")


__all__ = [
    "CPU_SECONDS",
    "FILE_BYTES",
    "MEMORY_BYTES",
    "Sandbox",
    "SandboxUnavailable",
    "available",
    "confine",
    "trusted",
    "unavailable_reason",
]
