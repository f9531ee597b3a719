"""Code from a golden runs only in the sandbox (issue 12).

Hostile goldens built here, each re-signed (the attacker controls the whole golden), plant a
payload in a format that can run code: TorchScript calling ``torch.from_file(PATH, True, N)``
(which creates PATH), a torch.package whose pickle runs ``exec``, a case's trusted pickle. The
controls show each payload really writes its marker when loaded without a sandbox; through the
runner it never does, and the golden is named as failing. Further payloads try the network, a
signal to the runner and unbounded memory.
"""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest
import torch

from harness import isolation, sandbox
from harness.compat import expected_torch_deprecations
from harness.outcomes import GoldenSkip

from .reliability_helpers import copy_goldens, replace_file, run_checks

pytestmark = pytest.mark.skipif(
    sandbox.available() is None, reason=f"no sandbox here: {sandbox.unavailable_reason()}"
)

LINEAR, PACKAGE_CASE, TRUSTED_CASE = "linear", "linear_relu_package", "lstm"


class Exec:
    """Unpickling this runs ``exec(code)``."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (self.code,))


def touch(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


class FileWriter(torch.nn.Module):
    """TorchScript whose forward creates ``path`` (shared=True makes torch create the file)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.from_file(self.path, True, 4).sum() * 0


def scripted_writer(marker: Path) -> bytes:
    buf = io.BytesIO()
    with expected_torch_deprecations():
        torch.jit.save(torch.jit.script(FileWriter(str(marker))), buf)
    return buf.getvalue()


def package_running(code: str, tmp: Path) -> bytes:
    from torch.package import PackageExporter

    path = tmp / "hostile.package.pt"
    with PackageExporter(str(path)) as exporter:
        exporter.save_pickle("qbc_case", "model.pkl", Exec(code))
    return path.read_bytes()


def pickle_running(code: str) -> bytes:
    buf = io.BytesIO()
    torch.save({"weight": torch.ones(2), "payload": Exec(code)}, buf)
    return buf.getvalue()


# ------------------------------------------------------------------ controls: the payloads are live


def test_control_a_scripted_module_creates_a_file_when_run_outside_the_sandbox(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    with expected_torch_deprecations():
        module = torch.jit.load(io.BytesIO(scripted_writer(marker)))
        module(torch.ones(1))
    assert marker.exists()


def test_control_the_package_and_pickle_payloads_run_outside_the_sandbox(tmp_path: Path) -> None:
    from torch.package import PackageImporter

    marker_a, marker_b = tmp_path / "a", tmp_path / "b"
    (tmp_path / "p.pt").write_bytes(package_running(touch(marker_a), tmp_path))
    PackageImporter(str(tmp_path / "p.pt")).load_pickle("qbc_case", "model.pkl")
    torch.load(io.BytesIO(pickle_running(touch(marker_b))), weights_only=False)
    assert marker_a.exists() and marker_b.exists()


# ------------------------------------------------------------------ through the runner


def _hostile(tmp_path: Path, case: str, fmt: str, content: bytes) -> Path:
    store = copy_goldens(tmp_path / "golden", (case,))
    replace_file(store, case, fmt, content)  # re-signed
    return store


@pytest.mark.parametrize("fmt", ["scripted", "traced"])
def test_torchscript_that_writes_a_file_cannot_write_outside_the_sandbox(
    tmp_path: Path, policy, fmt: str
) -> None:
    marker = tmp_path / "marker"
    store = _hostile(tmp_path, LINEAR, fmt, scripted_writer(marker))

    (outcome,) = run_checks(store, LINEAR, {fmt}, policy)

    assert not marker.exists()
    assert outcome.kind == "failed", outcome
    assert f"case {LINEAR}, format {fmt}" in outcome.message


def test_a_package_payload_cannot_write_outside_the_sandbox(tmp_path: Path, policy) -> None:
    marker = tmp_path / "marker"
    store = _hostile(tmp_path, PACKAGE_CASE, "package", package_running(touch(marker), tmp_path))

    (outcome,) = run_checks(store, PACKAGE_CASE, {"package"}, policy)

    assert not marker.exists()
    assert outcome.kind == "failed"
    assert "Permission denied" in outcome.message


def test_a_trusted_pickle_payload_cannot_write_outside_the_sandbox(tmp_path: Path, policy) -> None:
    marker = tmp_path / "marker"
    store = _hostile(tmp_path, TRUSTED_CASE, "state_dict", pickle_running(touch(marker)))

    (outcome,) = run_checks(store, TRUSTED_CASE, {"state_dict"}, policy)

    assert not marker.exists()
    assert outcome.kind == "failed"
    assert f"case {TRUSTED_CASE}, format state_dict" in outcome.message


# Tasks of a worker process (harness.isolation): module-level, plain data in and out.


def unpickle(data: bytes) -> str:
    torch.load(io.BytesIO(data), weights_only=False)
    return "ran"


def write_scratch() -> str:
    Path("left-behind").write_text("x")  # the working directory is the scratch folder
    return os.getcwd()


def fork_a_daemon() -> int:
    r, w = os.pipe()
    if os.fork() == 0:  # a process the task leaves behind
        os.write(w, os.readlink("/proc/self").encode())  # its pid as the host sees it
        import time

        time.sleep(60)
        os._exit(0)
    return int(os.read(r, 32))


def abort() -> None:
    os.kill(os.getpid(), signal.SIGABRT)


def _in_sandbox(code: str) -> tuple[str, str]:
    """Run ``code`` unpickled in a sandboxed child; (outcome, message)."""
    try:
        return "ok", isolation.call(unpickle, pickle_running(code), timeout=120, sandboxed=True)
    except isolation.TaskProblem as problem:
        return type(problem).__name__, str(problem)


def test_the_sandbox_has_no_network() -> None:
    code = "import socket; socket.create_connection(('1.1.1.1', 53), timeout=5)"
    outcome, message = _in_sandbox(code)
    assert outcome == "TaskError"
    assert "unreachable" in message or "Network" in message or "Errno" in message


def test_the_sandbox_cannot_signal_the_runner() -> None:
    # The payload aims SIGKILL at this test's process: its pid means nothing in the sandbox's
    # PID namespace, and Landlock scopes signals to the sandbox anyway (ABI 6+).
    outcome, message = _in_sandbox(f"import os, signal; os.kill({os.getpid()}, signal.SIGKILL)")
    assert outcome == "TaskError"
    assert "ProcessLookupError" in message or "PermissionError" in message


def test_the_sandbox_bounds_memory() -> None:
    # 64 GiB of new address space, over the sandbox's limit (QBC_SANDBOX_MEMORY_MB, 4 GiB)
    outcome, message = _in_sandbox("import torch; torch.empty(64 << 30, dtype=torch.uint8)")
    assert outcome in ("TaskError", "NativeCrash")
    assert "memory" in message.lower() or "alloc" in message.lower() or "signal" in message


def test_the_scratch_folder_is_writable_and_removed_after_the_task(tmp_path: Path) -> None:
    scratch = isolation.call(write_scratch, sandboxed=True, timeout=120)
    assert "qbc-sandbox-" in scratch
    assert not Path(scratch).exists()


def test_descendants_of_a_task_die_with_it() -> None:
    host_pid = isolation.call(fork_a_daemon, sandboxed=True, timeout=120)
    import time

    time.sleep(0.5)
    # the daemon was in the task's PID namespace: killed when its init, the task, ended
    assert _state(host_pid) in (None, "Z"), f"process {host_pid} outlived its task"


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_without_a_sandbox_code_capable_loads_are_skipped_unless_trusted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sandbox, "_status", lambda: (None, "no Landlock in this kernel"))
    monkeypatch.delenv("QBC_TRUST", raising=False)
    with pytest.raises(GoldenSkip, match=r"no Landlock in this kernel.*--trust"):
        isolation.confinement(True)
    assert isolation.confinement(False) is None
    monkeypatch.setenv("QBC_TRUST", "1")
    assert isolation.confinement(True) == "trusted: no sandbox (no Landlock in this kernel)"


def test_the_sandbox_that_ran_is_named() -> None:
    box = sandbox.available()
    assert box is not None and box.name == "landlock+namespaces"
    assert isolation.confinement(True) == str(box)


def test_a_sandboxed_crash_is_reported_as_the_same_signal() -> None:
    with pytest.raises(isolation.NativeCrash, match="SIGABRT"):
        isolation.call(abort, sandboxed=True, timeout=120)
