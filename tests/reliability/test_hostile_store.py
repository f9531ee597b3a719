"""Acceptance of issue 12: the default ``qbc verify`` on a store with one hostile golden of each
kind, the store index rebuilt by the attacker so that only the goldens themselves can give
them away. No payload writes a marker anywhere, and every hostile golden is named as failing.

Each hostile golden is a real golden copied into a producer folder of its own (a qbc version
that never existed, so no known break matches), its manifest re-signed for the planted file.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from harness import index, sandbox

from . import test_pt2_no_code as pt2_variants
from . import test_sandbox as code_payloads
from .reliability_helpers import COMMITTED

pytestmark = pytest.mark.skipif(
    sandbox.available() is None, reason=f"no sandbox here: {sandbox.unavailable_reason()}"
)

SOURCE = "torch-2.13.0_qbc-0.1.0"


def plant(
    store: Path, n: int, subject: str, engine: str, case: str, edit: Callable[[dict, Path], None]
) -> str:
    """Copy a committed golden into producer ``torch-2.13.0_qbc-0.0.<n>`` and let ``edit``
    change its manifest and files (then every file is re-signed); returns the golden id."""
    producer = f"torch-2.13.0_qbc-0.0.{n}"
    src = COMMITTED / subject / SOURCE
    dst = store / subject / producer
    manifest = json.loads((src / engine / case / "manifest.json").read_text())
    (dst / engine / case).mkdir(parents=True)
    for entry in manifest["files"].values():
        (dst / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / entry["path"], dst / entry["path"])
    manifest["producer"]["id"] = producer
    edit(manifest, dst)
    for entry in manifest["files"].values():
        if (dst / entry["path"]).is_file():
            blob = (dst / entry["path"]).read_bytes()
            entry["sha256"], entry["size"] = hashlib.sha256(blob).hexdigest(), len(blob)
    (dst / engine / case / "manifest.json").write_text(json.dumps(manifest))
    return f"{subject}/{producer}/{engine}/{case}"


def replace(fmt: str, content: Callable[[], bytes]) -> Callable[[dict, Path], None]:
    def edit(manifest: dict, producer_dir: Path) -> None:
        (producer_dir / manifest["files"][fmt]["path"]).write_bytes(content())

    return edit


def test_the_default_verify_runs_no_payload_and_names_every_hostile_golden(
    tmp_path: Path,
) -> None:
    store, markers = tmp_path / "golden", tmp_path / "markers"
    markers.mkdir()
    hostile: dict[str, str] = {}
    n = 20

    def add(kind: str, subject: str, engine: str, case: str, edit: Callable) -> None:
        nonlocal n
        hostile[plant(store, n, subject, engine, case, edit)] = kind
        n += 1

    for variant, (make, _) in pt2_variants.VARIANTS.items():
        (markers / variant).mkdir()  # the AOTI variant compiles its .so beside its marker
        marker = markers / variant / "marker"

        def edit(manifest: dict, producer_dir: Path, make=make, marker=marker) -> None:
            path = producer_dir / manifest["files"]["exported"]["path"]
            pt2_variants.rewrite(path, make(marker))

        add(f"pt2 {variant}", "qbc", "reference", "pt2e_two_linear", edit)
    for fmt in ("scripted", "traced"):
        marker = markers / f"{fmt}-marker"
        add(
            f"TorchScript {fmt} writing a file",
            "torch_ao",
            "fbgemm",
            "linear",
            replace(fmt, lambda m=marker: code_payloads.scripted_writer(m)),
        )
    package_marker, trusted_marker, pickle_marker = (
        markers / f"{k}-marker" for k in ("pkg", "trusted", "wo")
    )
    add(
        "package payload",
        "torch_ao",
        "fbgemm",
        "linear_relu_package",
        replace(
            "package",
            lambda: code_payloads.package_running(code_payloads.touch(package_marker), tmp_path),
        ),
    )
    add(
        "trusted pickle payload",
        "torch_ao",
        "fbgemm",
        "lstm",
        replace(
            "state_dict", lambda: code_payloads.pickle_running(code_payloads.touch(trusted_marker))
        ),
    )
    add(
        "weights-only pickle payload",
        "torch_ao",
        "fbgemm",
        "linear",
        replace(
            "state_dict", lambda: code_payloads.pickle_running(code_payloads.touch(pickle_marker))
        ),
    )

    def nan_weights() -> bytes:
        path = COMMITTED / "torch_ao" / SOURCE
        entry = json.loads((path / "fbgemm/linear_dynamic_float16/manifest.json").read_text())
        state = torch.load(path / entry["files"]["state_dict"]["path"], weights_only=True)
        buf = io.BytesIO()
        with torch.no_grad():
            # the fp16 weight and the bias sit in the packed-params tuple
            weight, bias = state["_packed_params._packed_params"]
            state["_packed_params._packed_params"] = (
                torch.full_like(weight, float("nan")),
                torch.nn.Parameter(torch.full_like(bias, float("nan"))),
            )
        torch.save(state, buf)
        return buf.getvalue()

    add(
        "NaN weights",
        "torch_ao",
        "fbgemm",
        "linear_dynamic_float16",
        replace("state_dict", nan_weights),
    )

    def undeclared_package(manifest: dict, producer_dir: Path) -> None:
        manifest["files"]["package"] = dict(manifest["files"]["input"])

    add(
        "package entry the case does not declare",
        "torch_ao",
        "fbgemm",
        "linear",
        undeclared_package,
    )
    index.write(store)  # the attacker keeps the index in step with the hostile goldens

    proc = subprocess.run(
        [
            *(sys.executable, "-m", "harness.cli", "verify", "--store", str(store)),
            *("-n", "0", "--json", str(tmp_path / "results.json")),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=tmp_path,
    )

    assert sorted(markers.rglob("*marker")) == [], "a payload ran outside the sandbox"
    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())
    failed_goldens = {r["id"].rsplit("/", 1)[0] for r in rows if r["outcome"] == "failed"}
    missed = {gid: kind for gid, kind in hostile.items() if gid not in failed_goldens}
    assert missed == {}, f"hostile goldens not named as failing: {missed}"
    for gid in hostile:
        assert gid in proc.stdout
    summary = {
        kind: sorted({r["outcome"] for r in rows if r["id"].startswith(gid + "/")})
        for gid, kind in hostile.items()
    }
    print(json.dumps(summary, indent=1))
