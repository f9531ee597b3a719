"""Run qbc's tests, its main job (verify the golden store), golden regeneration and lint.

    nox -l                                   # list sessions
    nox                                      # tests + verify on the default release (2.13.0)
    nox -s "verify(torch='2.14.1')"          # old and new goldens on torch 2.14.1
    nox -s "regen(torch='2.6.0')"            # write goldens as producer torch-2.6.0
    nox -s "tests(torch='2.6.0')" -- tests/quant -x   # extra arguments go to the command
    nox -s lint                              # ruff check + ruff format --check
    nox -s "capped(isa='avx2')"              # tests + verify, every process capped to avx2
    nox -s downstream                        # nightly: every producer's exported goldens lowered
    nox -R -s "tests(torch='2.13.0')"        # reuse the session's venv, install nothing

Each session has its own virtualenv, managed by nox, so nox's own flags work: ``-r`` reuses a
venv, ``-R`` reuses it without installing, ``--install-only`` only installs. The backend is uv
when it is installed (its cache hardlinks torch into each venv, so three sessions of a release
cost one copy of it on disk), else virtualenv. torch is always pinned: an unpinned ``torch``
pulls a multi-GB CUDA build.

Prebuilt venvs: with ``QBC_VENVS=/work/venvs`` the torch sessions run in
``$QBC_VENVS/torch-<release>`` instead (torch already there; qbc is installed into it in nox's
install step, which ``--no-install`` skips), which saves downloading a multi-GB torch build
per session for older releases.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

DEFAULT_TORCH = "2.13.0"
# Every minor from 2.6 (the oldest qbc supports, docs/versions.md) to 2.14, at its newest patch;
# each writes its own producer and verifies every producer's goldens.
TORCH_RELEASES = [
    "2.6.0", "2.7.1", "2.8.0", "2.9.1", "2.10.0", "2.11.0", "2.12.1", DEFAULT_TORCH, "2.14.1",
]  # fmt: skip

nox.options.sessions = [f"tests(torch='{DEFAULT_TORCH}')", f"verify(torch='{DEFAULT_TORCH}')"]

PREBUILT = os.environ.get("QBC_VENVS")
# The venv of a torch session: nox's own (uv when available), or a prebuilt one (no backend).
TORCH_BACKEND = "none" if PREBUILT else "uv|virtualenv"


def with_torch(session: nox.Session, torch: str, extras: str = "test") -> str:
    """Install pinned torch and qbc (with ``extras``) for ``session``; return the folder
    of the venv's executables ("" for nox's own venv, whose bin/ is already on PATH)."""
    if not PREBUILT:
        session.install(f"torch=={torch}", "-e", f".[{extras}]")
        return ""
    bin_dir = Path(PREBUILT) / f"torch-{torch}" / "bin"
    if not (bin_dir / "python").exists():
        session.error(f"QBC_VENVS: no venv at {bin_dir.parent} (create it with torch=={torch})")
    session.run_install(
        str(bin_dir / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
        f"torch=={torch}", "-e", f".[{extras}]", external=True,
    )  # fmt: skip
    return f"{bin_dir}/"


@nox.session(venv_backend=TORCH_BACKEND)
@nox.parametrize("torch", TORCH_RELEASES)
def tests(session: nox.Session, torch: str) -> None:
    """The unit tests and the BC runner (pytest, all cores)."""
    bin_dir = with_torch(session, torch)
    session.run(f"{bin_dir}pytest", "-n", "auto", *session.posargs, external=bool(bin_dir))


@nox.session(venv_backend=TORCH_BACKEND)
@nox.parametrize("torch", TORCH_RELEASES)
def verify(session: nox.Session, torch: str) -> None:
    """The main job: every producer's goldens verified on this torch release."""
    bin_dir = with_torch(session, torch)
    session.run(f"{bin_dir}qbc", "verify", *session.posargs, external=bool(bin_dir))


@nox.session(venv_backend=TORCH_BACKEND)
@nox.parametrize("torch", TORCH_RELEASES)
def regen(session: nox.Session, torch: str) -> None:
    """Write this release's goldens (its own producer folder; other producers are untouched)."""
    bin_dir = with_torch(session, torch)
    session.run(f"{bin_dir}qbc", "regen", *session.posargs, external=bool(bin_dir))


@nox.session(venv_backend=TORCH_BACKEND)
@nox.parametrize("isa", ["avx2", "avx512", "avx512_vnni"])
def capped(session: nox.Session, isa: str) -> None:
    """The tests and the main job on the default release with every process capped to ISA
    class ``isa`` (``QBC_ISA_CAP``, harness/isa.py): one machine plays a lower CPU of a CI
    fleet. A cap at or above this CPU's class changes nothing."""
    bin_dir = with_torch(session, DEFAULT_TORCH)
    env = {"QBC_ISA_CAP": isa}
    external = bool(bin_dir)
    session.run(f"{bin_dir}pytest", "-n", "auto", *session.posargs, env=env, external=external)
    session.run(f"{bin_dir}qbc", "verify", env=env, external=external)


@nox.session(venv_backend=TORCH_BACKEND)
def downstream(session: nox.Session) -> None:
    """The main job with every producer's exported goldens lowered by every downstream consumer
    (nightly). CI's `.ci/run` lowers today's producer's only (`--downstream-producers current`):
    the whole store's lowerings cost minutes, over CI's budget for them (README)."""
    bin_dir = with_torch(session, DEFAULT_TORCH, extras="test,downstream")
    session.run(
        f"{bin_dir}qbc", "verify", "--downstream", "all", "--downstream-producers", "all",
        *session.posargs, external=bool(bin_dir),
    )  # fmt: skip


@nox.session(venv_backend="uv|virtualenv")
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting, as CONTRIBUTING asks before every commit."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
