"""Reading a ``torch.export`` archive (``.pt2``) without running anything stored in it.

``torch.export.load`` (torch 2.13, ``torch/export/pt2_archive/_package.py`` and
``torch/_export/serde/serialize.py``) can run code from the file in eight ways:

- sample inputs (``data/sample_inputs/model.pt``), and in the pre-2.7 layout the state dict,
  constants and example inputs, are unpickled with ``weights_only=True`` and, when that fails,
  again with ``weights_only=False``;
- a weight or constant whose config says ``"use_pickle": true`` is unpickled with
  ``weights_only=False``; a legacy ``data/weights/<model>.pt`` / ``data/constants/<model>.pt``
  is handed to the same fallback;
- ``custom_obj_*`` constants go through ``torch._C._pickle_load_obj``, ``opaque_obj_*`` through
  ``pickle.loads``;
- any file under ``data/aotinductor/`` makes torch ``dlopen`` the shared object it names;
- symbolic shape expressions (``expr_str``) are parsed by ``sympy.sympify``, which ``eval``\\ s;
- ``guards_code`` strings are pasted into Python source that ``ExportedProgram.module()``
  ``exec``\\ s, and so are the string constants of user inputs;
- node names, parameter names and ``stack_trace`` metadata are pasted into the ``forward``
  source the FX graph module generates and ``exec``\\ s;
- a node ``target`` is any attribute path under ``torch``, ``math`` or ``_operator``
  (``torch.os.system`` included), called when the module runs.

:func:`load` therefore reads the archive itself: the entries must be those ``torch.export.save``
writes for one program (:data:`NEW_LAYOUT`, torch 2.8's :data:`PICKLED_LAYOUT`, or the pre-2.7
:data:`OLD_LAYOUT`); weights and constants are built from their raw bytes and JSON metadata
(torch 2.8 stores them as one ``torch.save`` dict each, read by the weights-only unpickler);
the sample inputs, a ``torch.save`` pickle, are read with the weights-only unpickler and no
fallback; the program's JSON is parsed refusing duplicate keys and checked against the grammar in
:func:`check_program` (names are identifiers, targets are ops of :data:`OP_NAMESPACES`, no
symbolic expression, no guard code, no custom object, metadata without line breaks). Only then
does torch deserialize it, handed the tensors and inputs as objects so none of its unpickling
paths runs. Afterwards every call target must be an operator overload of those namespaces. The
pre-2.7 layout stores its state dict, constants and example inputs as ``torch.save`` pickles:
those are read the same weights-only way, like every other tensor file of the store.

Anything refused raises :class:`UnsafeArchive` naming the entry or field.
"""

from __future__ import annotations

import io
import json
import operator
import re
import unicodedata
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from harness import jsonstrict

#: op namespaces an exported golden may call (qbc's graphs use aten ops and the standard
#: quantize/dequantize schema)
OP_NAMESPACES = ("aten", "quantized_decomposed")
#: python functions torch.export itself emits as call targets
PY_TARGETS = {"_operator.getitem": operator.getitem}

MODEL = "model"
NEW_LAYOUT = {
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
    f"models/{MODEL}.json",
    f"data/weights/{MODEL}_weights_config.json",
    f"data/constants/{MODEL}_constants_config.json",
    f"data/sample_inputs/{MODEL}.pt",
}
_NEW_PAYLOAD = re.compile(r"data/(weights/weight|constants/tensor)_\d{1,9}")
#: torch 2.8 wrote the pt2 archive with all weights, and all constants, as one ``torch.save``
#: dict each (2.9 moved to one raw file per tensor with JSON metadata)
PICKLED_LAYOUT = (
    NEW_LAYOUT
    - {f"data/weights/{MODEL}_weights_config.json", f"data/constants/{MODEL}_constants_config.json"}
) | {
    f"data/weights/{MODEL}.pt",
    f"data/constants/{MODEL}.pt",
}
OLD_LAYOUT = {
    "version",
    "serialized_exported_program.json",
    "serialized_state_dict.pt",
    "serialized_constants.pt",
    "serialized_example_inputs.pt",
}

# The serialized ScalarType numbers (torch/_export/serde/schema.py, part of the file format).
_DTYPES = {
    1: torch.uint8,
    2: torch.int8,
    3: torch.int16,
    4: torch.int32,
    5: torch.int64,
    6: torch.float16,
    7: torch.float32,
    8: torch.float64,
    12: torch.bool,
    13: torch.bfloat16,
}
_STRIDED = 7

_TOKEN = re.compile(r"[A-Za-z0-9_.]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TARGET = re.compile(
    r"torch\.ops\.(?:" + "|".join(OP_NAMESPACES) + r")\.[A-Za-z_]\w*\.[A-Za-z_]\w*"
)
_FLOAT_WORDS = {"Infinity", "-Infinity", "NaN"}  # how torch's JSON spells non-finite floats
# node metadata kept (the numeric debugger reads "custom"); stack_trace and the rest are dropped
_METADATA = ("nn_module_stack", "source_fn_stack", "torch_fn", "custom")
_REFUSED_KEYS = {
    "expr_str": "a symbolic shape expression (torch parses it with sympy, which evaluates code)",
    "as_custom_obj": "a custom object (unpickled by torch)",
    "custom_obj": "a custom object (unpickled by torch)",
    "as_graph": "a subgraph of a higher-order op",
}


class UnsafeArchive(ValueError):
    """A .pt2 archive the safe reader refuses before torch sees it; the message says why."""


def load(path: Path) -> torch.export.ExportedProgram:
    """The exported program in ``path``, read as the module docstring says."""
    import harness.quant.decomposed as decomposed

    decomposed.ensure_registered()  # quantized_decomposed ops, before the graph names them
    with zipfile.ZipFile(path) as archive:
        names = [info.filename for info in archive.infolist()]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise UnsafeArchive(f"entry {dup!r} appears twice (readers disagree on which wins)")
        if "serialized_exported_program.json" in names:
            program = _load_old(archive, names)
        else:
            program = _load_new(archive, names)
    _check_targets(program)
    return program


# ------------------------------------------------------------------------------ layouts


def _load_new(archive: zipfile.ZipFile, names: list[str]) -> torch.export.ExportedProgram:
    root = PurePosixPath(names[0]).parts[0] if names else ""
    rels = {name: name[len(root) + 1 :] if name.startswith(root + "/") else None for name in names}
    # torch 2.8's layout: pickled weights and no per-tensor config (a mix is refused below)
    pickled = f"data/weights/{MODEL}_weights_config.json" not in rels.values()
    for name, rel in rels.items():
        allowed = (
            rel in PICKLED_LAYOUT
            if pickled
            else rel in NEW_LAYOUT or _NEW_PAYLOAD.fullmatch(rel or "")
        )
        if rel is None or not allowed:
            raise UnsafeArchive(f"entry {name!r} is not part of an exported program: {_why(rel)}")
    read = lambda rel: archive.read(f"{root}/{rel}")  # noqa: E731
    for rel, want in (("archive_format", b"pt2"), ("byteorder", b"little")):
        if read(rel) != want:
            raise UnsafeArchive(f"{rel} is {read(rel)[:40]!r}, expected {want!r}")
    if pickled:
        state = _weights_only(archive, f"{root}/data/weights/{MODEL}.pt", dict)
        constants = _weights_only(archive, f"{root}/data/constants/{MODEL}.pt", dict)
    else:
        state = _payloads(archive, root, "weights", f"data/weights/{MODEL}_weights_config.json")
        constants = _payloads(
            archive, root, "constants", f"data/constants/{MODEL}_constants_config.json"
        )
    inputs = _weights_only(archive, f"{root}/data/sample_inputs/{MODEL}.pt", tuple)
    return _deserialize(read(f"models/{MODEL}.json"), state, constants, inputs)


def _why(rel: str | None) -> str:
    if rel is None:
        return "outside the archive's root folder"
    if rel.startswith("data/aotinductor/") or rel.endswith((".so", ".dll", ".dylib")):
        return "AOTInductor code (shared objects torch would dlopen) is never loaded"
    if re.fullmatch(r"data/(weights|constants)/[^/]+\.pt", rel):
        return (
            "a legacy pickled weights/constants file beside per-tensor payloads "
            "(torch writes one or the other)"
        )
    if "custom_obj" in rel or "opaque_obj" in rel:
        return "a pickled custom/opaque object (torch would unpickle it)"
    return "only the entries torch.export.save writes for one program are read"


def _load_old(archive: zipfile.ZipFile, names: list[str]) -> torch.export.ExportedProgram:
    for name in names:
        if name not in OLD_LAYOUT:
            raise UnsafeArchive(
                f"entry {name!r} is not part of a pre-2.7 exported program: {_why(name)}"
            )

    return _deserialize(
        archive.read("serialized_exported_program.json"),
        _weights_only(archive, "serialized_state_dict.pt", dict),
        _weights_only(archive, "serialized_constants.pt", dict),
        _weights_only(archive, "serialized_example_inputs.pt", tuple),
    )


def _weights_only(archive: zipfile.ZipFile, name: str, kind: type) -> Any:
    """A ``torch.save`` entry read by the weights-only unpickler, without torch's
    ``weights_only=False`` fallback; empty entries are empty."""
    data = archive.read(name)
    if not data:
        return kind()
    try:
        value = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()
        raise UnsafeArchive(
            f"{name} is refused by the weights-only unpickler (nothing was executed): "
            + next((line for line in reason if "GLOBAL" in line), reason[0] if reason else "")
        ) from None
    if not isinstance(value, kind):
        raise UnsafeArchive(f"{name} holds a {type(value).__name__}, not a {kind.__name__}")
    return value


# ------------------------------------------------------------------------------ tensors


def _payloads(
    archive: zipfile.ZipFile, root: str, kind: str, config_rel: str
) -> dict[str, torch.Tensor]:
    """Weights or constants from their raw bytes and the config's tensor metadata."""
    config = _json(archive.read(f"{root}/{config_rel}"), config_rel)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict) or set(config) != {"config"}:
        raise UnsafeArchive(f"{config_rel} is not a payload config")
    storages: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    prefix = "weight_" if kind == "weights" else "tensor_"
    for fqn, entry in entries.items():
        where = f"{config_rel}: {fqn!r}"
        _fqn(fqn, where)
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
            raise UnsafeArchive(
                f"{where} is stored as a pickle (use_pickle), which torch would unpickle fully"
            )
        path_name = entry.get("path_name")
        if not isinstance(path_name, str) or not re.fullmatch(prefix + r"\d{1,9}", path_name):
            raise UnsafeArchive(f"{where}: payload {path_name!r} is not a plain tensor file")
        meta = entry.get("tensor_meta")
        dtype, sizes, strides, offset, requires_grad = _tensor_meta(meta, where)
        if path_name not in storages:
            raw = archive.read(f"{root}/data/{kind}/{path_name}")
            if len(raw) % dtype.itemsize:
                raise UnsafeArchive(f"{where}: {len(raw)} bytes is not a whole number of {dtype}")
            flat = (
                torch.frombuffer(bytearray(raw), dtype=dtype)
                if raw
                else torch.zeros(0, dtype=dtype)
            )
            storages[path_name] = flat
        flat = storages[path_name]
        extent = offset + sum((s - 1) * st for s, st in zip(sizes, strides, strict=True)) + 1
        numel = 1
        for s in sizes:
            numel *= s
        if numel and extent > flat.numel():
            raise UnsafeArchive(
                f"{where}: tensor metadata reaches past its {flat.numel()} elements"
            )
        tensor = (
            torch.as_strided(flat, sizes, strides, offset)
            if numel
            else torch.zeros(sizes, dtype=dtype)
        )
        if entry.get("is_param") is True:
            tensor = torch.nn.Parameter(tensor, requires_grad=requires_grad)
        elif requires_grad:
            tensor.requires_grad_(True)
        out[fqn] = tensor
    return out


def _tensor_meta(meta: Any, where: str) -> tuple[torch.dtype, list[int], list[int], int, bool]:
    if not isinstance(meta, dict):
        raise UnsafeArchive(f"{where}: no tensor metadata")
    dtype = _DTYPES.get(meta.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise UnsafeArchive(f"{where}: dtype {meta.get('dtype')!r} is not a plain tensor dtype")
    if meta.get("layout") != _STRIDED or meta.get("device") != {"type": "cpu", "index": None}:
        raise UnsafeArchive(f"{where}: only strided CPU tensors are read")

    def ints(value: Any) -> list[int]:
        if not isinstance(value, list) or len(value) > 16:
            raise UnsafeArchive(f"{where}: bad shape {value!r}")
        return [_int(v, where) for v in value]

    offset = _int(meta.get("storage_offset"), where)
    sizes, strides = ints(meta.get("sizes")), ints(meta.get("strides"))
    if len(sizes) != len(strides):
        raise UnsafeArchive(f"{where}: {len(sizes)} sizes but {len(strides)} strides")
    return dtype, sizes, strides, offset, meta.get("requires_grad") is True


def _int(value: Any, where: str) -> int:
    n = value.get("as_int") if isinstance(value, dict) and set(value) == {"as_int"} else None
    if type(n) is not int or not 0 <= n < 1 << 40:
        raise UnsafeArchive(
            f"{where}: {value!r} is not a static size (symbolic shapes are refused)"
        )
    return n


def _fqn(name: Any, where: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"\w+(\.\w+)*", name, re.ASCII):
        raise UnsafeArchive(f"{where}: {name!r} is not a dotted attribute name")


# ------------------------------------------------------------------------------ program


def _json(data: bytes, what: str) -> Any:
    try:
        return jsonstrict.loads(data)
    except jsonstrict.JSONProblem as exc:
        raise UnsafeArchive(f"{what}: {exc}") from None


def check_program(program: Any) -> None:
    """Refuse (UnsafeArchive) a serialized program outside the grammar the module docstring
    gives; drops the node metadata torch would paste into generated code (stack traces)."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise UnsafeArchive("the program is not a serialized ExportedProgram")
    if program.get("guards_code", []) != []:
        raise UnsafeArchive(
            "guards_code is present: torch pastes it into Python source it executes"
        )
    if program.get("range_constraints", {}) != {}:
        raise UnsafeArchive("range_constraints are present: symbolic shapes are refused")
    gm = program["graph_module"]
    graph = gm.get("graph")
    if not isinstance(graph, dict):
        raise UnsafeArchive("the program has no graph")
    for key in ("sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values"):
        if graph.get(key, {}) != {}:
            raise UnsafeArchive(
                f"graph.{key} is not empty: symbolic values and objects are refused"
            )
    if gm.get("metadata", {}) not in ({},) and set(gm["metadata"]) != {"custom"}:
        raise UnsafeArchive("graph_module.metadata holds more than 'custom'")
    if gm.get("treespec_namedtuple_fields", {}) != {}:
        raise UnsafeArchive("treespec_namedtuple_fields would make torch build namedtuple types")
    nodes = graph.get("nodes")
    if not isinstance(nodes, list):
        raise UnsafeArchive("graph.nodes is not a list")
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise UnsafeArchive(f"node {i} is not an object")
        target = node.get("target")
        if not isinstance(target, str) or not (_TARGET.fullmatch(target) or target in PY_TARGETS):
            raise UnsafeArchive(
                f"node {i} calls {str(target)[:80]!r}: only ops of "
                f"{', '.join(OP_NAMESPACES)} (and operator.getitem) are called"
            )
        node["metadata"] = _metadata(node.get("metadata", {}), f"node {i}")
    for i, spec in enumerate(gm.get("module_call_graph", [])):
        sig = spec.get("signature") if isinstance(spec, dict) else None
        for key in ("in_spec", "out_spec"):
            if isinstance(sig, dict) and sig.get(key) is not None:
                # pytree specs: JSON whose types torch looks up in its registry (no import)
                _json(str(sig[key]).encode(), f"module_call_graph[{i}].{key}")
    _walk(program, "program")


def _metadata(meta: Any, where: str) -> dict[str, str]:
    if not isinstance(meta, dict):
        raise UnsafeArchive(f"{where}: metadata is not an object")
    kept = {}
    for key in _METADATA:
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or any(
            unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value
        ):
            raise UnsafeArchive(f"{where}: metadata {key!r} holds control or line-break characters")
        if key == "custom" and not isinstance(_json(value.encode(), f"{where} custom"), dict):
            raise UnsafeArchive(f"{where}: metadata 'custom' is not a JSON object")
        kept[key] = value
    return kept


def _walk(value: Any, where: str) -> None:
    """Every key and string outside node metadata and tree specs is a plain token; every
    ``name`` an identifier; no refused construct anywhere."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _REFUSED_KEYS:
                raise UnsafeArchive(f"{where}.{key}: {_REFUSED_KEYS[key]} is refused")
            _token(key, f"{where} key")
            if key in ("metadata", "in_spec", "out_spec"):
                continue  # checked by _metadata / as JSON above
            if key == "torch_version" and isinstance(item, str):
                if not re.fullmatch(r"[\w.+-]{1,64}", item, re.ASCII):
                    raise UnsafeArchive(f"{where}.torch_version {item[:40]!r} is not a version")
                continue
            if key == "name" and isinstance(item, str) and not _IDENTIFIER.fullmatch(item):
                raise UnsafeArchive(f"{where}.name {item[:80]!r} is not an identifier")
            _walk(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, f"{where}[{i}]")
    elif isinstance(value, str) and value not in _FLOAT_WORDS:
        _token(value, where)


def _token(text: str, where: str) -> None:
    if len(text) > 256 or not _TOKEN.fullmatch(text):
        raise UnsafeArchive(
            f"{where}: {text[:80]!r} is not a plain name (letters, digits, '_' and '.')"
        )


def _deserialize(
    program_json: bytes, state: dict[str, Any], constants: dict[str, Any], inputs: tuple[Any, ...]
) -> torch.export.ExportedProgram:
    from torch._export.serde.serialize import SerializedArtifact, deserialize

    program = _json(program_json, "program JSON")
    check_program(program)
    checked = json.dumps(program).encode()
    # objects, not bytes: torch's deserialize_torch_artifact passes them through without
    # unpickling (an empty tuple stands for "no example inputs")
    artifact = SerializedArtifact(checked, state, constants, inputs or b"")
    return deserialize(artifact)


def _check_targets(program: torch.export.ExportedProgram) -> None:
    for node in _call_nodes(program):
        target = node.target
        if target in PY_TARGETS.values():
            continue
        if not isinstance(target, torch._ops.OpOverload) or target.namespace not in OP_NAMESPACES:
            raise UnsafeArchive(f"node {node.name} calls {target!r}, not an op of {OP_NAMESPACES}")


def _call_nodes(program: torch.export.ExportedProgram) -> Iterator[torch.fx.Node]:
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        if graph is not None:
            yield from (n for n in graph.nodes if n.op == "call_function")
