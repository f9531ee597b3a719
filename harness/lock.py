"""One regeneration of a golden store at a time.

:func:`regen_lock` takes an exclusive, non-blocking ``flock`` on the store folder itself (no lock
file is created, so the store's bytes do not change). The kernel drops the lock when its holder
exits, however it exits (even SIGKILL), so a lock is never stale. A second regeneration fails at
once with :class:`RegenLocked`, whose message names the store and, on Linux, the holder's pid.

:func:`locked_regeneration` applies the lock to a function whose first argument is the store
(the generator's ``generate``), so every writer of the store (``tools/regen_goldens.py``,
``qbc generate``) goes through it; holding the lock, it first clears what killed regenerations
left in the staging area (harness.atomic).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; the lock is a no-op there
    fcntl = None  # type: ignore[assignment]


class RegenLocked(RuntimeError):
    """Another regeneration holds the store."""


def _holder_pid(path: Path) -> int | None:
    """The pid holding a flock on ``path``, from /proc/locks (Linux), else None."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 12345 08:01:1234 0 EOF"
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            pid = int(parts[4])
            _dev, inode = parts[5].rsplit(":", 1)
            if int(inode) == st.st_ino:
                return pid
        except ValueError:
            continue
    return None


@contextlib.contextmanager
def regen_lock(store: Path) -> Iterator[None]:
    """Hold the store for one regeneration; :class:`RegenLocked` if another one holds it."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(store, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder_pid(store)
            holder = f" (process {pid})" if pid is not None and pid != os.getpid() else ""
            raise RegenLocked(
                f"another regeneration{holder} is writing the golden store {store}; "
                "two regenerations at once are refused: wait for it to finish and run again"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


F = TypeVar("F", bound=Callable[..., Any])


def locked_regeneration(fn: F) -> F:
    """Run ``fn(store, ...)`` holding :func:`regen_lock` on ``store``, clearing staging leftovers
    before and after."""

    @functools.wraps(fn)
    def run(store: Path, *args: Any, **kwargs: Any) -> Any:
        from harness import atomic

        with regen_lock(Path(store)):
            atomic.clean_staging(Path(store))
            try:
                return fn(store, *args, **kwargs)
            finally:
                # A run that raised leaves nothing behind either, not even the empty staging root
                # (a SIGKILLed one leaves its leftovers to the next run's clean_staging).
                atomic.clean_staging(Path(store))

    return run  # type: ignore[return-value]
