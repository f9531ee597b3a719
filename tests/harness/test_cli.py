"""The ``qbc`` command as users run it: the installed console script, in a subprocess.

Exit status as pytest's: 0 all good, 1 a regression (or, for ``diff``, goldens that differ),
2 a usage error or something missing, named in one line, 5 nothing to check. Never a traceback
for a user's mistake, never 0 on an empty run.

The store is the two-golden copy of the plugin tests (12 checks: per_tensor_observer's 5 formats
on fbgemm, linear's 7 on qnnpack)."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PRODUCER_ID, REPO, STORE

import harness
from harness import cli, index, scope

QBC = str(Path(sys.executable).parent / "qbc")
COMMITTED_RESULTS = REPO / "docs" / "compat" / "torch-2.13.0.json"


@pytest.fixture
def store(small_store: Path) -> Path:
    return small_store


def qbc(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [QBC, *args], capture_output=True, text=True, cwd=cwd, timeout=600, stdin=subprocess.DEVNULL
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The message of a user error: exactly one line on stderr, no traceback."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_version_names_qbc_and_the_installed_torch() -> None:
    done = qbc("--version")

    assert done.returncode == 0
    assert done.stdout.startswith(f"qbc {harness.__version__} (torch 2.")


def test_verify_prints_matrix_grouped_failures_and_a_final_line_with_counts_and_time(
    store: Path,
) -> None:
    graph = store / "torch_ao" / PRODUCER_ID / "qnnpack" / "linear" / "graph.txt"
    graph.write_text(graph.read_text() + "  extra_op\n")

    done = qbc("verify", "--store", str(store), "-n", "0")

    assert done.returncode == 1
    out = done.stdout.splitlines()
    # every message first, then the matrix, then one line per (subject, engine, case, cause),
    # then the counts: what stays on screen is the summary
    assert out.index(f"FAILED torch_ao/{PRODUCER_ID}/qnnpack/linear/graph") < out.index(
        next(line for line in out if line.startswith("compatibility matrix"))
    )
    assert (
        "FAILED torch_ao/qnnpack/linear: golden file failed its integrity check "
        f"(1 check: graph of {PRODUCER_ID})"
    ) in out
    assert out[-1].startswith("1 failed, 11 passed in ") and out[-1].endswith("s")
    assert done.stderr == ""  # no progress bar when stderr is not a terminal


def test_verify_quiet_prints_only_the_grouped_failures_and_counts(store: Path) -> None:
    clean = qbc("verify", "--store", str(store), "-n", "0", "-q")

    assert clean.returncode == 0
    assert "compatibility matrix" not in clean.stdout
    assert clean.stdout.strip().startswith("12 passed in ")


def test_verify_shows_progress_on_a_terminal(store: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [QBC, "verify", "--store", str(store), "-n", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, cwd=REPO,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the terminal's other end closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(timeout=600) == 0

    bar = seen.decode(errors="replace")
    assert "qbc verify" in bar and "12/12" in bar  # the bar reached every check


def test_verify_with_a_k_that_matches_nothing_exits_5_saying_so(store: Path) -> None:
    done = qbc("verify", "--store", str(store), "-n", "0", "-k", "nosuchthing")

    assert done.returncode == 5
    assert one_line_error(done) == (
        f"qbc verify: no check matches -k 'nosuchthing' (12 checks in {store})"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--store", "{tmp}/nowhere"], "qbc verify: no golden store at {tmp}/nowhere (--store)"),
        (
            ["--json", "{tmp}/missing/results.json"],
            "qbc verify: --json {tmp}/missing/results.json: directory {tmp}/missing does not exist",
        ),
        (
            ["--policy", "{tmp}/policy.toml"],
            "qbc verify: policy file {tmp}/policy.toml does not exist",
        ),
        (["--subject", "mylib"], "qbc verify: unknown subject 'mylib'; known: torch_ao, qbc"),
    ],
)
def test_verify_refuses_what_is_missing_in_one_line_before_running(
    store: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    argv = ["verify", "--store", str(store), "-n", "0", *[a.format(tmp=tmp_path) for a in args]]

    done = qbc(*argv)

    assert done.returncode == 2
    assert one_line_error(done) == message.format(tmp=tmp_path)


def test_verify_takes_a_policy_and_known_breaks(store: Path, tmp_path: Path) -> None:
    # a policy allowing less than no error fails every numeric check (all but linear/graph: 11
    # of the 12); a known break that expects linear/graph to fail is then an unexpected pass
    (tmp_path / "policy.toml").write_text("[default]\nmax_steps = -1\n")
    (tmp_path / "breaks.toml").write_text(
        '[[break]]\nname = "demo"\ncase = "linear"\nformat = "graph"\nfails = "graph"\n'
        'reason = "demo"\n'
    )

    done = qbc(
        "verify", "--store", str(store), "-n", "0", "-q",
        "--policy", str(tmp_path / "policy.toml"), "--known-breaks", str(tmp_path / "breaks.toml"),
    )  # fmt: skip

    assert done.returncode == 1
    assert "a known break passes (XPASS)" in done.stdout
    assert done.stdout.splitlines()[-1].startswith("11 failed, 1 xpass in ")


def test_verify_json_is_strict_json(store: Path, tmp_path: Path) -> None:
    done = qbc("verify", "--store", str(store), "-n", "0", "-q", "--json", str(tmp_path / "r.json"))

    assert done.returncode == 0
    rows = json.loads(
        (tmp_path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON")
    )
    assert {r["outcome"] for r in rows} == {"passed"} and len(rows) == 12


def test_verify_downstream_producers_current_lowers_only_todays_exported_golden(
    tmp_path: Path,
) -> None:
    # pt2e_two_linear written by today's producer and by torch 2.6: both exported goldens are
    # read by today's torch, only today's gets a downstream check. Which checks run is the
    # behaviour here, not a lowering (seconds): without isolation they are skipped saying so.
    today, past = scope.todays_producer("qbc"), "torch-2.6.0_qbc-0.1.0"
    for producer in (today, past):
        dest = tmp_path / "golden" / "qbc" / producer
        shutil.copytree(STORE / "qbc" / producer, dest)
        for case_dir in dest.glob("*/*"):
            if case_dir.parent.name != "blobs" and case_dir.name != "pt2e_two_linear":
                shutil.rmtree(case_dir)
    index.write(tmp_path / "golden")
    rows_file = tmp_path / "r.json"

    done = qbc(
        "verify", "--store", str(tmp_path / "golden"), "-n", "0", "-q", "-k", "exported",
        "--downstream", "onnxruntime", "--downstream-producers", "current", "--no-isolation",
        "--json", str(rows_file),
    )  # fmt: skip

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ids = {r["id"] for r in json.loads(rows_file.read_text())}
    golden = "reference/pt2e_two_linear/exported"
    assert ids == {
        f"qbc/{today}/{golden}",
        f"qbc/{past}/{golden}",
        f"qbc/{today}/{golden}@onnxruntime",
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [(None, "does not exist"), ('{"consumer": ', "is not valid JSON")],
    ids=["missing", "corrupt"],
)
def test_report_on_a_missing_or_corrupt_results_file_names_it(
    tmp_path: Path, text: str | None, problem: str
) -> None:
    path = tmp_path / "results.json"
    if text is not None:
        path.write_text(text)

    done = qbc("report", "--results", str(path))

    assert done.returncode == 2
    assert one_line_error(done).startswith(f"qbc report: results file {path} {problem}")


def test_report_into_a_pipe_closed_early_exits_quietly() -> None:
    # as `qbc report | head -1`
    proc = subprocess.Popen(
        [QBC, "report", "--format", "md", "--results", str(COMMITTED_RESULTS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.wait(timeout=300)

    assert first == b"# qbc report\n"
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_cases_json_lists_the_formats_each_engine_writes() -> None:
    done = qbc("cases", "--subject", "qbc", "--json")

    assert done.returncode == 0
    linear = next(c for c in json.loads(done.stdout) if c["case"] == "linear")
    # qbc's native-engine modules run eagerly only: no TorchScript goldens on fbgemm
    assert "scripted" in linear["formats"]["reference"]
    assert "scripted" not in linear["formats"]["fbgemm"]


def test_engines_json_says_which_engine_runs_here() -> None:
    done = qbc("engines", "--json")

    assert done.returncode == 0
    rows = json.loads(done.stdout)
    reference = next(r for r in rows if (r["subject"], r["engine"]) == ("qbc", "reference"))
    assert reference == {"subject": "qbc", "engine": "reference", "available": True, "reason": None}


def _resave(golden: Path, fmt: str, value: object | None = None) -> None:
    """Rewrite ``fmt``'s file of the golden: the same tensors under another archive name
    (other bytes, same contents), or ``value``; the manifest follows."""
    import hashlib

    import torch

    manifest_path = golden / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["files"][fmt]
    blob = golden.parent.parent / entry["path"]
    data = torch.load(blob, weights_only=True) if value is None else value
    new = blob.with_name("resaved_" + blob.name)
    torch.save(data, new)  # torch.save names the archive's folder after the file
    raw = new.read_bytes()
    entry.update(path=f"blobs/{new.name}", sha256=hashlib.sha256(raw).hexdigest(), size=len(raw))
    manifest_path.write_text(json.dumps(manifest))


def test_diff_compares_contents_not_bytes(store: Path) -> None:
    a = store / "torch_ao" / PRODUCER_ID / "fbgemm" / "per_tensor_observer"
    b = a.with_name("copy")
    shutil.copytree(a, b)
    data = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**data, "case": "copy"}))
    _resave(b, "input")

    same = qbc("diff", str(a), str(b))

    assert same.returncode == 0, same.stdout + same.stderr
    assert "input: same contents" in same.stdout


def test_diff_names_input_leaves_as_inputs_and_exits_1_when_contents_differ(store: Path) -> None:
    import torch

    a = store / "torch_ao" / PRODUCER_ID / "fbgemm" / "per_tensor_observer"
    b = a.with_name("copy")
    shutil.copytree(a, b)
    inputs = torch.load(a.parent.parent / json.loads((a / "manifest.json").read_text())["files"]["input"]["path"], weights_only=True)  # fmt: skip
    _resave(b, "input", tuple(x + 1 for x in inputs))

    differs = qbc("diff", str(a), str(b))

    assert differs.returncode == 1
    assert "input: differs" in differs.stdout
    assert "  input[0] (float32" in differs.stdout


def test_diff_of_a_folder_that_is_no_golden_is_one_line_exit_2(tmp_path: Path) -> None:
    done = qbc("diff", str(STORE), str(tmp_path / "nowhere"))

    assert done.returncode == 2
    assert (
        one_line_error(done) == f"qbc diff: {STORE} is not a golden folder (no manifest.json there)"
    )


def test_regen_is_installed_and_refuses_past_producers(tmp_path: Path) -> None:
    done = qbc("regen", "--store", str(tmp_path), "--producer", "torch-1.13.1_qbc-0.0.1")

    assert done.returncode == 2
    assert one_line_error(done).startswith(
        "qbc regen: refusing to write producer 'torch-1.13.1_qbc-0.0.1'"
    )
    assert not any(tmp_path.iterdir())


def test_regen_of_an_empty_store_asks_which_subjects(tmp_path: Path) -> None:
    done = qbc("regen", "--store", str(tmp_path / "golden"))

    assert done.returncode == 2
    assert "name the subjects to write (--subject; known: torch_ao, qbc)" in one_line_error(done)


@pytest.mark.parametrize(
    ("requested", "checks", "workers"),
    [("auto", 12, "0"), ("auto", cli.PARALLEL_MIN_CHECKS, "auto"), ("2", 12, "2")],
)
def test_auto_workers_only_when_the_store_is_large_enough(
    requested: str, checks: int, workers: str
) -> None:
    # starting a worker imports torch and harness: a small store verifies faster in process
    assert cli.workers_for(requested, checks) == workers
