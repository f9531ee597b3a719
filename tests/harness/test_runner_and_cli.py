"""The pytest runner (ids, a known break that no longer happens) and the `qbc` command line.

Runner and `qbc verify` are exercised in a subprocess on a small copy of the store (two
goldens), which is what a user's CI does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PRODUCER_ID, REPO, STORE

from harness.cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def test_runner_ids_and_a_passing_known_break_fails_naming_its_entry(
    small_store: Path, tmp_path: Path
) -> None:
    breaks = tmp_path / "breaks.toml"
    breaks.write_text(
        '[[break]]\nname = "demo"\ncase = "linear"\nformat = "traced"\nproducers = ">=2.13"\n'
        'raises = "KeyError"\nreason = "demo break"\n'
    )
    proc = run(
        "-m", "pytest", "tests/bc/test_goldens.py", "-p", "no:cacheprovider", "-rxX", "-v",
        "--qbc-store", str(small_store), "--qbc-known-breaks", str(breaks),
    )  # fmt: skip
    out = proc.stdout
    assert (
        f"test_golden[torch_ao/{PRODUCER_ID}/fbgemm/per_tensor_observer/safetensors] PASSED" in out
    )
    # The entry says the traced load raises KeyError; it loads fine: news, so the check fails.
    assert f"test_golden[torch_ao/{PRODUCER_ID}/qnnpack/linear/traced] FAILED" in out
    assert "XPASS known break demo: this check passed" in out
    assert proc.returncode == 1


def test_verify_prints_matrix_and_passes_on_a_clean_store(small_store: Path) -> None:
    proc = run("-m", "harness.cli", "verify", "--store", str(small_store), "-n", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compatibility matrix (consumer torch-" in proc.stdout
    assert f"torch_ao  {PRODUCER_ID}  fbgemm" in proc.stdout
    assert "failed" not in proc.stdout


def test_verify_of_a_store_named_relative_to_the_working_directory_loads_every_format(
    small_store: Path,
) -> None:
    # `qbc verify --store golden` from the folder holding it, as the README runs it: sandboxed
    # loads (scripted, traced) run elsewhere and still find their files
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "verify", "--store", "golden", "-n", "0"],
        capture_output=True, text=True, cwd=small_store.parent, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_verify_exits_nonzero_and_explains_a_regression(small_store: Path) -> None:
    graph = small_store / "torch_ao" / PRODUCER_ID / "qnnpack" / "linear" / "graph.txt"
    graph.write_text(graph.read_text() + "  extra_op\n")
    proc = run("-m", "harness.cli", "verify", "--store", str(small_store), "-n", "0")
    assert proc.returncode == 1
    assert f"FAILED torch_ao/{PRODUCER_ID}/qnnpack/linear/graph" in proc.stdout
    assert "does not match its manifest" in proc.stdout


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["cases", "--subject", "nosuch"], "unknown subject 'nosuch'"),
        (["generate", "--subject", "torch_ao", "--case", "nosuch*"], "no case matches 'nosuch*'"),
        (
            ["generate", "--subject", "torch_ao", "--engine", "tpu"],
            "unknown torch_ao engine 'tpu'",
        ),
    ],
)
def test_unknown_names_are_clear_errors(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main([*argv, *(["--out", str(tmp_path)] if argv[0] == "generate" else [])]) == 2
    assert named in capsys.readouterr().err


def test_cases_lists_every_seed_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cases", "--subject", "torch_ao"]) == 0
    listed = {line.split("\t")[0] for line in capsys.readouterr().out.splitlines()}
    for name in ("linear", "linear_dynamic_float16", "conv2d_nobias_graph_v3", "lstm", "default_qat_qconfig",
                 "linear_relu_package", "per_channel_observer", "conv3d_relu"):  # fmt: skip
        assert f"torch_ao/{name}" in listed


def test_diff_shows_engine_differences_with_statistics(capsys: pytest.CaptureFixture[str]) -> None:
    base = STORE / "torch_ao" / PRODUCER_ID
    assert main(["diff", str(base / "fbgemm" / "conv2d"), str(base / "qnnpack" / "conv2d")]) == 1
    out = capsys.readouterr().out
    assert "input: identical" in out  # same seed, same input on every engine
    assert "expected: differs" in out
    assert "output" in out and ("qparams" in out or "steps" in out)


def test_regen_refuses_to_write_another_producer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "regen_goldens", REPO / "tools" / "regen_goldens.py"
    )
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    # a producer that is never today's, whichever torch runs this test
    other = "torch-1.13.1_qbc-0.0.1"
    assert regen.main(["--store", str(tmp_path), "--producer", other]) == 2
    assert f"refusing to write producer '{other}'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
