"""No code execution: a golden's pickles are read with weights_only=True, so a planted
``__reduce__`` payload never runs and the failure says why; the one format that must run code
(torch.package) is only opened once its hash matches the manifest, and is marked as such."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch

from .reliability_helpers import (
    LINEAR,
    OBSERVER,
    PRODUCER,
    SUBJECT,
    copy_goldens,
    file_of,
    replace_file,
    run_checks,
)


class Payload:
    """Unpickling this calls ``exec`` on a statement that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def hostile_pickle(marker: Path, legacy: bool) -> bytes:
    """A state_dict-shaped file (plain tensors plus one payload entry), zip or legacy format."""
    buf = io.BytesIO()
    state = {"weight": torch.ones(2), "bias": Payload(marker)}
    torch.save(state, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def test_the_planted_payload_really_runs_when_unpickled_without_weights_only(
    tmp_path: Path,
) -> None:
    # Control for the tests below: the payload is live, so its absence there means something.
    marker = tmp_path / "ran"
    torch.load(io.BytesIO(hostile_pickle(marker, legacy=False)), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    ("case", "fmt", "legacy"),
    [
        (OBSERVER, "state_dict", False),
        (OBSERVER, "state_dict_legacy", True),
        (OBSERVER, "input", False),
        (OBSERVER, "expected", False),
        (LINEAR, "state_dict", False),
    ],
)
def test_a_malicious_reduce_in_a_resigned_pickle_is_refused_and_never_runs(
    store: Path, policy, tmp_path: Path, case: str, fmt: str, legacy: bool
) -> None:
    # The attacker re-signs the manifest, so integrity passes and the loader itself is tested.
    marker = tmp_path / "payload-ran"
    replace_file(store, case, fmt, hostile_pickle(marker, legacy))

    outcomes = {o.fmt: o for o in run_checks(store, case, {fmt}, policy)}

    assert not marker.exists()
    assert outcomes[fmt].kind == "failed"
    assert "refused to run code from the golden" in outcomes[fmt].message
    assert "weights_only=True, nothing was executed" in outcomes[fmt].message
    # what it asked for (torch 2.6 spells the global builtins.exec)
    assert re.search(r"Unsupported global: GLOBAL (builtins\.)?exec", outcomes[fmt].message)


PACKAGE_CASE = "linear_relu_package"


def hostile_package(path: Path, marker: Path) -> None:
    from torch.package import PackageExporter

    with PackageExporter(str(path)) as exporter:
        exporter.save_pickle("qbc_case", "model.pkl", Payload(marker))


def test_a_package_whose_hash_does_not_match_is_never_opened(tmp_path: Path, policy) -> None:
    # torch.package must run code to load; a tampered package is refused by its hash first.
    store = copy_goldens(tmp_path / "golden", (PACKAGE_CASE,))
    marker = tmp_path / "package-payload-ran"
    forged = tmp_path / "forged.package.pt"
    hostile_package(forged, marker)
    assert not marker.exists()
    file_of(store, PACKAGE_CASE, "package").write_bytes(forged.read_bytes())  # not re-signed

    outcomes = {o.fmt: o for o in run_checks(store, PACKAGE_CASE, {"package"}, policy)}

    assert outcomes["package"].kind == "failed"
    assert "does not match its manifest" in outcomes["package"].message
    assert not marker.exists()


def test_formats_that_run_code_are_flagged_in_manifests_and_named_in_the_report(
    tmp_path: Path,
) -> None:
    from harness.formats import get_format
    from harness.report import render
    from harness.store import iter_goldens
    from harness.subjects import get_case

    from .reliability_helpers import COMMITTED

    flagged = {
        (g.case, fmt)
        for g in iter_goldens(COMMITTED)
        for fmt, entry in g.manifest.files.items()
        if entry.runs_code_on_load
    }
    # Exactly the formats whose loader executes code, or the case's declared trusted loads.
    for case, fmt in flagged:
        assert get_format(fmt).runs_code_on_load or fmt in get_case(SUBJECT, case).trusted_load
    assert (PACKAGE_CASE, "package") in flagged

    store = copy_goldens(tmp_path / "golden", (OBSERVER, PACKAGE_CASE))
    report = json.loads(render("json", [], store))
    assert report["runs_code_on_load"] == ["scripted", "traced", "package"]
    assert report["runs_code_on_load_checks"] == [
        f"{SUBJECT}/{PRODUCER}/fbgemm/{PACKAGE_CASE}/package"
    ]
    assert f"{PACKAGE_CASE}/package" in render("md", [], store)


def test_clearing_the_manifest_flag_does_not_hide_a_check_that_runs_code(tmp_path: Path) -> None:
    from harness.report import render

    from .reliability_helpers import read_manifest, write_manifest

    store = copy_goldens(tmp_path / "golden", (PACKAGE_CASE,))
    data = read_manifest(store, PACKAGE_CASE)
    data["files"]["package"]["runs_code_on_load"] = False  # what an attacker would write
    write_manifest(store, PACKAGE_CASE, data)

    report = json.loads(render("json", [], store))
    assert report["runs_code_on_load_checks"] == [
        f"{SUBJECT}/{PRODUCER}/fbgemm/{PACKAGE_CASE}/package"
    ]


def test_the_report_names_the_sandbox_and_the_trusted_checks(tmp_path: Path) -> None:
    from harness.report import render

    store = copy_goldens(tmp_path / "golden", (PACKAGE_CASE,))
    check = f"{SUBJECT}/{PRODUCER}/fbgemm/{PACKAGE_CASE}/package"
    row = {"id": check, "outcome": "passed", "message": "", "drift": {}}
    boxed = json.loads(render("json", [{**row, "sandbox": "landlock+namespaces (x)"}], store))
    assert boxed["sandboxes"] == ["landlock+namespaces (x)"] and boxed["trusted_checks"] == []
    trusted = json.loads(render("json", [{**row, "sandbox": "trusted: no sandbox (y)"}], store))
    assert trusted["trusted_checks"] == [check]
