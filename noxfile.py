"""Run qbc's tests, its main job (verify the golden store) and golden regeneration per torch release.

    nox -l                                   # list sessions
    nox                                      # tests + verify on the default release (2.13.0)
    nox -s "verify(torch='2.14.1')"          # old and new goldens on torch 2.14.1
    nox -s "regen(torch='2.6.0')"            # write goldens as producer torch-2.6.0
    nox -s "tests(torch='2.6.0')" -- tests/quant -x   # extra arguments go to the command

One venv per torch release, shared by the three sessions and reused between runs: a torch
install is 1-5 GB (2.14.1 comes from local disk, older releases download CUDA builds), so three
copies per release would waste disk and time. Venvs live in ``$QBC_VENVS`` (default
``.nox/venvs``); point it at prebuilt ones, e.g. ``QBC_VENVS=/work/venvs``. torch is always
pinned: an unpinned ``torch`` pulls a multi-GB CUDA build.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

DEFAULT_TORCH = "2.13.0"
# Every minor from 2.6 (the oldest qbc supports, docs/versions.md) to 2.14, at its newest patch;
# each writes its own producer and verifies every producer's goldens.
TORCH_RELEASES = [
    "2.6.0", "2.7.1", "2.8.0", "2.9.1", "2.10.0", "2.11.0", "2.12.1", DEFAULT_TORCH, "2.14.1",
]  # fmt: skip

nox.options.sessions = [f"tests(torch='{DEFAULT_TORCH}')", f"verify(torch='{DEFAULT_TORCH}')"]
nox.options.reuse_venv = "yes"

VENVS = Path(os.environ.get("QBC_VENVS", Path(__file__).parent / ".nox" / "venvs"))


def torch_venv(session: nox.Session, torch: str) -> Path:
    """Create (once) the venv for this torch release, install pinned torch and qbc; return bin/."""
    venv = VENVS / f"torch-{torch}"
    if not (venv / "bin" / "python").exists():
        session.run(sys.executable, "-m", "venv", str(venv), external=True)
    pip = str(venv / "bin" / "pip")
    session.run(pip, "install", "--disable-pip-version-check", "-q", f"torch=={torch}",
                "-e", ".[test]", external=True)  # fmt: skip
    return venv / "bin"


@nox.session(venv_backend="none")
@nox.parametrize("torch", TORCH_RELEASES)
def tests(session: nox.Session, torch: str) -> None:
    """The unit tests and the BC runner (pytest, all cores)."""
    bin_dir = torch_venv(session, torch)
    session.run(str(bin_dir / "pytest"), "-n", "auto", *session.posargs, external=True)


@nox.session(venv_backend="none")
@nox.parametrize("torch", TORCH_RELEASES)
def verify(session: nox.Session, torch: str) -> None:
    """The main job: every producer's goldens verified on this torch release."""
    bin_dir = torch_venv(session, torch)
    session.run(str(bin_dir / "qbc"), "verify", *session.posargs, external=True)


@nox.session(venv_backend="none")
@nox.parametrize("torch", TORCH_RELEASES)
def regen(session: nox.Session, torch: str) -> None:
    """Write this release's goldens (its own producer folder; other producers are untouched)."""
    bin_dir = torch_venv(session, torch)
    session.run(str(bin_dir / "python"), "tools/regen_goldens.py", *session.posargs, external=True)
