"""What a process pays before it runs a check: the plugin and the xdist controller never import
torch, and an exported golden loads whatever the caller imported first."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_importing_the_package_plugin_and_command_does_not_import_torch(tmp_path):
    done = run_python(
        """
        import sys
        import harness, harness.pytest_plugin, harness.cli, harness.manifest, harness.compat
        harness.manifest.producer_info()  # the consumer row of a results file
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if "torch" in m)[:5]
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr


def test_the_torch_version_read_without_torch_is_torchs_own(tmp_path):
    done = run_python(
        """
        from harness import compat
        before = compat.torch_version_string()
        import torch
        assert before == torch.__version__ == compat.torch_version_string(), before
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr


# Three runs of one trivial test with the qbc plugin active: in process, as an xdist controller
# with one worker, and as `qbc verify` runs it (results file). None may import torch in the
# process that runs pytest.main (the worker is another process).
@pytest.mark.parametrize(
    "extra", [[], ["-n", "1"], ["-n", "1", "--qbc-results", "results.json"]], ids=str
)
def test_a_pytest_run_without_golden_checks_never_imports_torch(tmp_path, extra):
    (tmp_path / "test_trivial.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    done = run_python(
        f"""
        import sys, pytest
        code = pytest.main(["-q", "-p", "no:cacheprovider", "test_trivial.py", *{extra!r}])
        assert code == 0, code
        assert "harness.pytest_plugin" in sys.modules  # the pytest11 entry point loaded it
        assert "torch" not in sys.modules
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_the_exported_reader_loads_a_pt2e_golden_in_a_fresh_process(tmp_path):
    # The .pt2 names quantized_decomposed ops; nothing but the reader registers them here.
    golden = sorted((REPO / "golden" / "qbc").glob("torch-2.13.0_*/reference/pt2e_two_linear"))[0]
    manifest = json.loads((golden / "manifest.json").read_text())
    blob = golden.parent.parent / manifest["files"]["exported"]["path"]
    done = run_python(
        f"""
        import sys, torch
        from pathlib import Path
        from harness.formats.exported import read_exported
        program = read_exported(Path({str(blob)!r}), None)
        assert "quantized_decomposed" in str(program.graph)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_qbc_verify_with_workers_never_imports_torch_in_the_controller(tmp_path):
    # One real golden check, run by one xdist worker; the `qbc verify` process only collects
    # the worker's results and prints the matrix.
    producer = "torch-2.13.0_qbc-0.1.0"
    store = tmp_path / "golden"
    shutil.copytree(REPO / "golden" / "torch_ao" / producer, store / "torch_ao" / producer)
    done = run_python(
        f"""
        import sys
        from harness import cli
        code = cli.main(["verify", "--store", {str(store)!r}, "-n", "1", "-k", "fbgemm/linear/"])
        assert code == 0, code
        assert "torch" not in sys.modules
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "passed" in done.stdout


def test_format_names_known_before_the_readers_load_are_the_registry_order(tmp_path):
    done = run_python(
        """
        import sys
        from harness import formats
        names = formats.format_names()
        assert "torch" not in sys.modules
        formats.get_format("input")  # loads every built-in reader
        assert names == list(formats.FORMATS) == formats.format_names(), names
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
