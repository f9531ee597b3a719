"""``.pt2`` needs no code (issue 12): hostile exported goldens, built here from a real one.

Each variant plants a payload that creates a marker file the way ``torch.export.load`` (or the
module it returns) would run it: a pickle torch retries with ``weights_only=False``, a
``use_pickle`` weight, an ``opaque_obj`` constant, a legacy pickled weights file, an
AOTInductor shared object, guard code, a sympy expression, a node name pasted into generated
source. The controls show that torch's own loader really runs the payloads; the runner, which
reads ``.pt2`` through ``harness.formats.pt2``, must refuse every variant before anything runs,
name the golden as failing, and never create the marker.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from harness import isolation
from harness.formats import pt2

from .reliability_helpers import COMMITTED

SUBJECT, PRODUCER, ENGINE, CASE = "qbc", "torch-2.13.0_qbc-0.1.0", "reference", "pt2e_two_linear"
OLD_PRODUCER = "torch-2.6.0_qbc-0.1.0"  # the pre-2.7 archive layout


class Payload:
    """Unpickling this runs ``exec`` of a statement that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def torch_saved(value: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()


def copy_golden(dst: Path, producer: str = PRODUCER) -> Path:
    src = COMMITTED / SUBJECT / producer
    rel = Path(ENGINE) / CASE
    (dst / SUBJECT / producer / rel).mkdir(parents=True)
    manifest = json.loads((src / rel / "manifest.json").read_text())
    shutil.copy2(src / rel / "manifest.json", dst / SUBJECT / producer / rel / "manifest.json")
    for entry in manifest["files"].values():
        target = dst / SUBJECT / producer / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / entry["path"], target)
    return dst


def exported_file(store: Path, producer: str = PRODUCER) -> Path:
    m = json.loads((store / SUBJECT / producer / ENGINE / CASE / "manifest.json").read_text())
    return store / SUBJECT / producer / m["files"]["exported"]["path"]


def resign(store: Path, producer: str = PRODUCER) -> None:
    """The attacker controls the whole golden: the manifest matches the hostile archive."""
    path = store / SUBJECT / producer / ENGINE / CASE / "manifest.json"
    m = json.loads(path.read_text())
    blob = exported_file(store, producer).read_bytes()
    m["files"]["exported"]["sha256"] = hashlib.sha256(blob).hexdigest()
    m["files"]["exported"]["size"] = len(blob)
    path.write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")


def rewrite(path: Path, edit: Callable[[dict[str, bytes]], None]) -> None:
    """Rewrite the zip at ``path`` after ``edit`` changed its {entry name: bytes}."""
    with zipfile.ZipFile(path) as zf:
        entries = {i.filename: zf.read(i.filename) for i in zf.infolist()}
    edit(entries)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def _root(entries: dict[str, bytes]) -> str:
    return next(iter(entries)).split("/")[0]


def _edit_json(entries: dict[str, bytes], name: str, edit: Callable[[Any], None]) -> None:
    data = json.loads(entries[name])
    edit(data)
    entries[name] = json.dumps(data).encode()


# ------------------------------------------------------------------ the variants


def sample_inputs_pickle(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(e: dict[str, bytes]) -> None:
        e[f"{_root(e)}/data/sample_inputs/model.pt"] = torch_saved(((Payload(marker),), {}))

    return edit


def use_pickle_weight(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(e: dict[str, bytes]) -> None:
        root = _root(e)
        config = f"{root}/data/weights/model_weights_config.json"
        first = next(iter(json.loads(e[config])["config"].values()))["path_name"]

        def flag(d: Any) -> None:
            for entry in d["config"].values():
                if entry["path_name"] == first:
                    entry["use_pickle"] = True

        _edit_json(e, config, flag)
        e[f"{root}/data/weights/{first}"] = torch_saved(Payload(marker))

    return edit


def opaque_constant(marker: Path) -> Callable[[dict[str, bytes]], None]:
    import pickle

    def edit(e: dict[str, bytes]) -> None:
        root = _root(e)
        _edit_json(
            e,
            f"{root}/data/constants/model_constants_config.json",
            lambda d: d["config"].update(
                {
                    "evil": {
                        "path_name": "opaque_obj_0",
                        "is_param": False,
                        "use_pickle": True,
                        "tensor_meta": None,
                    }
                }
            ),
        )
        e[f"{root}/data/constants/opaque_obj_0"] = pickle.dumps(Payload(marker))

    return edit


def legacy_weights(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(e: dict[str, bytes]) -> None:
        e[f"{_root(e)}/data/weights/model.pt"] = torch_saved({"w": Payload(marker)})

    return edit


def aoti_shared_object(marker: Path) -> Callable[[dict[str, bytes]], None]:
    so = marker.parent / "wrapper.so"
    src = marker.parent / "wrapper.c"
    src.write_text(
        "#include <stdio.h>\n__attribute__((constructor)) static void run(void) {"
        f' FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
    )
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc:
        subprocess.run([gcc, "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    code = so.read_bytes() if so.exists() else b"\x7fELF not compiled"

    def edit(e: dict[str, bytes]) -> None:
        root = _root(e)
        e[f"{root}/data/aotinductor/model/x.wrapper.so"] = code
        e[f"{root}/data/aotinductor/model/x_metadata.json"] = b'{"AOTI_DEVICE_KEY": "cpu"}'

    return edit


def guards_code(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(e: dict[str, bytes]) -> None:
        _edit_json(
            e,
            f"{_root(e)}/models/model.json",
            lambda d: d.update(guards_code=[f"open({str(marker)!r}, 'w').close() is None"]),
        )

    return edit


def sympy_expression(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(e: dict[str, bytes]) -> None:
        def plant(d: Any) -> None:
            values = d["graph_module"]["graph"]["tensor_values"]
            meta = next(iter(values.values()))
            expr = f"(open({str(marker)!r}, 'w').close(), 1)[1]"
            meta["sizes"][0] = {"as_expr": {"expr_str": expr, "hint": {"as_int": 1}}}

        _edit_json(e, f"{_root(e)}/models/model.json", plant)

    return edit


def node_name_injection(marker: Path) -> Callable[[dict[str, bytes]], None]:
    """A node without users whose name breaks out of the generated line."""

    def edit(e: dict[str, bytes]) -> None:
        def plant(d: Any) -> None:
            graph = d["graph_module"]["graph"]
            x = graph["inputs"][-1]["as_tensor"]["name"]
            name = f"y\n    open({str(marker)!r}, 'w').close()\n    y"
            graph["tensor_values"][name] = graph["tensor_values"][x]
            graph["nodes"].insert(
                0,
                {
                    "target": "torch.ops.aten.relu.default",
                    "inputs": [{"name": "self", "arg": {"as_tensor": {"name": x}}, "kind": 1}],
                    "outputs": [{"as_tensor": {"name": name}}],
                    "metadata": {},
                    "is_hop_single_tensor_return": None,
                    "name": name,
                },
            )

        _edit_json(e, f"{_root(e)}/models/model.json", plant)

    return edit


VARIANTS: dict[str, tuple[Callable[[Path], Callable[[dict[str, bytes]], None]], str]] = {
    "sample_inputs_pickle": (sample_inputs_pickle, "refused by the weights-only unpickler"),
    "use_pickle_weight": (use_pickle_weight, "stored as a pickle (use_pickle)"),
    "opaque_obj_constant": (opaque_constant, "opaque_obj_0"),
    "legacy_weights_pt": (legacy_weights, "legacy pickled weights/constants file"),
    "aoti_shared_object": (aoti_shared_object, "AOTInductor code"),
    "guards_code": (guards_code, "guards_code is present"),
    "sympy_expression": (sympy_expression, "symbolic shape expression"),
    "node_name_injection": (node_name_injection, "is not an identifier"),
}
# torch's loader runs these. Not the others: the AOTI .so needs a complete AOTInductor package
# before torch dlopens it, sympy evaluates an expression only where torch expects a symbolic
# size, and torch 2.13 sanitizes node names before generating code (refused all the same).
TORCH_RUNS = (
    "sample_inputs_pickle",
    "use_pickle_weight",
    "opaque_obj_constant",
    "legacy_weights_pt",
    "guards_code",
)


def _torch_load_and_run(path: str) -> None:
    from harness.quant.decomposed import ensure_registered

    ensure_registered()  # the golden's graph names quantized_decomposed ops
    program = torch.export.load(path)
    inputs = program.example_inputs[0] if program.example_inputs else ()
    program.module()(*inputs)


@pytest.mark.parametrize("variant", TORCH_RUNS)
def test_control_torch_export_load_runs_the_payload(tmp_path: Path, variant: str) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "exported.pt2"
    shutil.copy2(exported_file(COMMITTED), path)
    rewrite(path, VARIANTS[variant][0](marker))
    # in a child: the payload is real, and torch may fail after running it
    with contextlib.suppress(isolation.IsolatedLoadProblem):
        isolation.call(_torch_load_and_run, str(path), timeout=120)
    assert marker.exists(), f"{variant}: torch.export.load did not run the payload"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_hostile_exported_golden_is_refused_before_anything_runs(
    tmp_path: Path, variant: str, policy
) -> None:
    from harness.verify import GoldenFailure, collect, run_check

    marker = tmp_path / "marker"
    store = copy_golden(tmp_path / "golden")
    make, expected = VARIANTS[variant]
    rewrite(exported_file(store), make(marker))
    resign(store)

    (item,) = [i for i in collect(store) if i.fmt == "exported"]
    with pytest.raises(GoldenFailure) as failure:
        run_check(item, policy)

    assert not marker.exists()
    message = str(failure.value)
    assert f"subject {SUBJECT}, producer {PRODUCER}, engine {ENGINE}, case {CASE}" in message
    assert "format exported" in message
    assert expected in message


@pytest.mark.parametrize("producer", [PRODUCER, OLD_PRODUCER, "torch-2.14.1_qbc-0.1.0"])
def test_every_committed_exported_golden_reads_like_torch_reads_it(producer: str) -> None:
    import logging

    from harness.compat import expected_torch_deprecations

    src = COMMITTED / SUBJECT / producer
    for manifest in sorted(src.glob(f"{ENGINE}/*/manifest.json")):
        files = json.loads(manifest.read_text())["files"]
        if "exported" not in files:
            continue
        path = src / files["exported"]["path"]
        ours = pt2.load(path)
        logging.disable(logging.WARNING)  # torch logs its fallback to the pre-2.7 layout
        try:
            with expected_torch_deprecations():
                theirs = torch.export.load(str(path))
        finally:
            logging.disable(logging.NOTSET)
        assert str(ours.graph) == str(theirs.graph), manifest
        assert ours.state_dict.keys() == theirs.state_dict.keys()
        for key, value in theirs.state_dict.items():
            assert torch.equal(ours.state_dict[key], value), (manifest, key)


def test_a_pre_2_7_archive_with_a_pickled_state_dict_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "old.pt2"
    shutil.copy2(exported_file(COMMITTED, OLD_PRODUCER), path)

    def edit(e: dict[str, bytes]) -> None:
        e["serialized_state_dict.pt"] = torch_saved({"w": Payload(marker)})

    rewrite(path, edit)
    with pytest.raises(pt2.UnsafeArchive, match="weights-only unpickler"):
        pt2.load(path)
    assert not marker.exists()


def test_a_call_target_outside_the_op_namespaces_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "exported.pt2"
    shutil.copy2(exported_file(COMMITTED), path)

    def edit(e: dict[str, bytes]) -> None:
        def retarget(d: Any) -> None:
            d["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"

        _edit_json(e, f"{_root(e)}/models/model.json", retarget)

    rewrite(path, edit)
    with pytest.raises(pt2.UnsafeArchive, match=r"calls 'torch\.os\.system'"):
        pt2.load(path)


def test_duplicate_keys_in_the_program_json_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "exported.pt2"
    shutil.copy2(exported_file(COMMITTED), path)

    def edit(e: dict[str, bytes]) -> None:
        name = f"{_root(e)}/models/model.json"
        e[name] = e[name].replace(b'{"graph_module"', b'{"torch_version": "x", "graph_module"', 1)
        e[name] = e[name].replace(b'"torch_version": "2', b'"torch_version": "3', 1)

    rewrite(path, edit)
    with pytest.raises(pt2.UnsafeArchive, match="duplicate key 'torch_version'"):
        pt2.load(path)


def as_torch_2_8_layout(path: Path, weights: Any = None) -> None:
    """Rewrite a torch >= 2.9 archive the way torch 2.8 wrote it: the per-tensor payloads and
    their JSON configs replaced by one ``torch.save`` dict of weights and one of constants
    (``weights`` replaces the weights dict, e.g. with a payload)."""
    program = pt2.load(path)

    def edit(e: dict[str, bytes]) -> None:
        root = _root(e)
        for name in [
            n for n in e if n.startswith((f"{root}/data/weights/", f"{root}/data/constants/"))
        ]:
            del e[name]
        e[f"{root}/data/weights/model.pt"] = torch_saved(
            dict(program.state_dict) if weights is None else weights
        )
        e[f"{root}/data/constants/model.pt"] = torch_saved(dict(program.constants))

    rewrite(path, edit)


def test_a_torch_2_8_archive_reads_like_torch_reads_it(tmp_path: Path) -> None:
    """torch 2.8 stored all weights in one pickle; read weights-only, it needs no code."""
    path = tmp_path / "exported.pt2"
    shutil.copy2(exported_file(COMMITTED), path)
    expected = pt2.load(path)
    as_torch_2_8_layout(path)

    ours = pt2.load(path)
    theirs = torch.export.load(str(path))
    assert str(ours.graph) == str(theirs.graph) == str(expected.graph)
    assert ours.state_dict.keys() == theirs.state_dict.keys() == expected.state_dict.keys()
    for key, value in expected.state_dict.items():
        assert torch.equal(ours.state_dict[key], value)
        assert torch.equal(theirs.state_dict[key], value)


def test_a_torch_2_8_archive_with_a_payload_in_its_weights_pickle_is_refused(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "exported.pt2"
    shutil.copy2(exported_file(COMMITTED), path)
    as_torch_2_8_layout(path, weights={"w": Payload(marker)})

    with pytest.raises(pt2.UnsafeArchive, match="weights-only unpickler"):
        pt2.load(path)
    assert not marker.exists()
