"""Atomic regeneration: a producer folder is replaced in one step, or not at all.

The generator builds a producer's new content in a *staging* folder next to the store
(``<store parent>/.<store name>.staging/``, outside the store, same file system), then
:func:`swap_in` exchanges it with the live folder in one ``renameat2(RENAME_EXCHANGE)`` call:
before that call the store holds exactly the old bytes, after it exactly the new ones. Nothing
the generator writes before the exchange is inside the store, so a run killed at any point
(SIGKILL included) leaves the store byte-identical to before; leftovers in the staging folder
are removed by the next regeneration (which holds :func:`harness.lock.regen_lock`).

Where ``renameat2`` is missing (not Linux, or a file system without exchange), the swap falls
back to two renames; a kill between them leaves the old folder under ``.old-*`` in the staging
area, which :func:`clean_staging` of the next regeneration puts back.

Kill-point hook for tests: every write step calls :func:`write_step`; with ``QBC_KILL_AT=N`` the
process SIGKILLs itself at the N-th step, and with ``QBC_WRITE_TRACE=FILE`` each step's label is
appended to FILE (so a test can count the steps of a run).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import uuid
from pathlib import Path

_steps = 0


def write_step(label: str) -> None:
    """Mark one write step of a regeneration (kill point for tests; see module docstring)."""
    global _steps
    _steps += 1
    trace = os.environ.get("QBC_WRITE_TRACE")
    if trace:
        with open(trace, "a") as f:
            f.write(f"{_steps} {label}\n")
    kill_at = os.environ.get("QBC_KILL_AT")
    if kill_at and int(kill_at) == _steps:
        os.kill(os.getpid(), signal.SIGKILL)


def reset_steps() -> None:
    """Start counting write steps from zero (a forked test child runs a fresh regeneration)."""
    global _steps
    _steps = 0


def staging_root(store: Path) -> Path:
    """Where producers are built before they are swapped into ``store``."""
    store = Path(store).absolute()
    return store.parent / f".{store.name}.staging"


def new_staging_dir(store: Path, subject: str, producer: str) -> Path:
    """A fresh empty-named path (not created) in the staging root for one producer."""
    root = staging_root(store)
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{subject}--{producer}--{uuid.uuid4().hex[:8]}"


def live_dir(staged: Path) -> Path:
    """The live producer folder ``<store>/<subject>/<producer>`` a staged folder replaces."""
    root = Path(staged).parent
    store = root.parent / root.name[1:].removesuffix(".staging")
    subject, _, rest = Path(staged).name.partition("--")
    return store / subject / rest.rsplit("--", 1)[0]


def clean_staging(store: Path) -> None:
    """Remove what killed regenerations left in the staging root (call holding the lock).

    A ``.old-<subject>--<producer>`` folder there whose live folder is missing is the old
    content of an interrupted two-rename fallback swap: it is put back first.
    """
    root = staging_root(store)
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".old-"):
            subject, _, rest = entry.name.removeprefix(".old-").partition("--")
            producer = rest.rsplit("--", 1)[0]
            live = Path(store) / subject / producer
            if not live.exists():
                os.rename(entry, live)
                continue
        shutil.rmtree(entry, ignore_errors=True)
    _rmdir_if_empty(root)


def _rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False when unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: no exchange on this file system
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def swap_in(staged: Path, live: Path) -> Path:
    """Make ``staged`` the content of ``live`` in one atomic step; the old content is deleted."""
    staged, live = Path(staged), Path(live)
    live.parent.mkdir(parents=True, exist_ok=True)
    write_step(f"commit {live.name}")
    if not live.exists():
        os.rename(staged, live)
    elif _exchange(staged, live):
        write_step(f"committed {live.name} (old content in staging)")
        shutil.rmtree(staged)  # now holds the old content
    else:
        subject_producer = staged.name.rsplit("--", 1)[0]
        old = staged.parent / f".old-{subject_producer}--{uuid.uuid4().hex[:8]}"
        os.rename(live, old)
        write_step(f"moved old {live.name} aside (fallback swap)")
        os.rename(staged, live)
        shutil.rmtree(old)
    _rmdir_if_empty(staged.parent)
    return live
