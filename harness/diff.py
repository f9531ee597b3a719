"""``qbc diff``: compare the contents of two goldens (folders holding a manifest.json).

Per format, one of:

- ``identical``: the same bytes;
- ``same contents``: different bytes holding the same values (a TorchScript archive records
  source paths, a legacy pickle per-process keys, ``torch.save`` the file name);
- ``differs``: the values differ; every differing leaf is listed with its statistics in
  quantization steps (as the runner measures them), a graph signature as a unified diff;
- ``only in A`` / ``only in B``.

Two goldens are the same when no format differs in contents. Every file is checked against its
manifest (size, sha256) before it is read, as the runner does; ``.pt2`` and ``package`` files
are compared by their bytes (loading them would run their programs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.contents import contents, plain, text_diff
from harness.integrity import load_manifest, verified_file
from harness.policy import compare_leaf, flatten

#: formats compared by bytes only
BYTES_ONLY = ("exported", "package")


def diff_goldens(a: Path, b: Path) -> tuple[str, bool]:
    """Text report of how golden ``b`` differs from ``a``, and whether their contents are the
    same. ManifestProblem / IntegrityError name a golden that cannot be read."""
    from harness.compat import expected_torch_deprecations

    with expected_torch_deprecations():  # goldens of torch_ao hold quantized tensors
        return _diff(Path(a), Path(b))


def _file(golden: Path, entry: Any, fmt: str) -> Path:
    producer_dir = golden.parent.parent
    return verified_file(producer_dir, producer_dir, entry, f"golden {golden}: {fmt} file")


def _values(fmt: str, path: Path) -> dict[str, Any]:
    if fmt == "safetensors":
        from safetensors.torch import load_file

        value: Any = load_file(str(path))
    else:
        value = plain(contents(path))
    # leaves named after what they are: input[0], output[0], state_dict.weight, ...
    return flatten(value, {"expected": "output"}.get(fmt, fmt))


def _compare(fmt: str, pa: Path, pb: Path) -> list[str]:
    """The differences between two files of ``fmt`` (empty: same contents)."""
    if fmt == "graph":
        return text_diff(pa.read_text(), pb.read_text())
    if fmt in BYTES_ONLY:
        return ["contents not compared (loading runs the program): bytes differ"]
    try:
        va, vb = _values(fmt, pa), _values(fmt, pb)
    except Exception as exc:  # e.g. a trusted-load state_dict (packed params): not weights-only
        return [f"contents not compared ({type(exc).__name__}: {exc}): bytes differ"]
    out = [f"only in {'A' if n in va else 'B'}: {n}" for n in sorted(va.keys() ^ vb.keys())]
    for name in sorted(va.keys() & vb.keys()):
        a, b = va[name], vb[name]
        if isinstance(a, str) and isinstance(b, str):  # code (a diff) or an entry's sha256
            if a != b:
                out += text_diff(a, b, name) if "\n" in a + b else [f"{name}: {a} (A) != {b} (B)"]
            continue
        stats = compare_leaf(name, b, a)
        if stats.problem or stats.max_steps > 0:
            out.append(stats.summary())
    return out


def _diff(a: Path, b: Path) -> tuple[str, bool]:
    ma, mb = load_manifest(a / "manifest.json", a), load_manifest(b / "manifest.json", b)
    lines = [
        f"A: {a} ({ma.producer_id}, {ma.engine}, ISA classes {', '.join(ma.classes)})",
        f"B: {b} ({mb.producer_id}, {mb.engine}, ISA classes {', '.join(mb.classes)})",
    ]
    same = True
    # the files each golden computed in its own ISA class (harness.manifest)
    for fmt in sorted(ma.files.keys() | mb.files.keys()):
        ea, eb = ma.files.get(fmt), mb.files.get(fmt)
        if ea is None or eb is None:
            lines.append(f"{fmt}: only in {'B' if ea is None else 'A'}")
            same = False
            continue
        if ea.sha256 == eb.sha256:
            lines.append(f"{fmt}: identical ({ea.sha256[:12]})")
            continue
        differences = _compare(fmt, _file(a, ea, fmt), _file(b, eb, fmt))
        sizes = f"{ea.sha256[:12]} vs {eb.sha256[:12]}, {ea.size} vs {eb.size} bytes"
        if not differences:
            lines.append(f"{fmt}: same contents ({sizes})")
            continue
        same = False
        lines.append(f"{fmt}: differs ({sizes})")
        lines += [f"  {d}" for d in differences]
    return "\n".join(lines), same
