"""``qbc diff``: compare two goldens (folders holding a manifest.json) file by file."""

from __future__ import annotations

import difflib
from pathlib import Path

from harness.integrity import load_manifest
from harness.policy import compare_leaf, flatten


def _producer_dir(golden_dir: Path) -> Path:
    return golden_dir.parent.parent


def diff_goldens(a: Path, b: Path) -> tuple[str, bool]:
    """Text report of how golden ``b`` differs from ``a`` and whether they are identical."""
    from harness.compat import expected_torch_deprecations

    with expected_torch_deprecations():  # goldens of torch_ao hold quantized tensors
        return _diff(a, b)


def _diff(a: Path, b: Path) -> tuple[str, bool]:
    import torch

    ma, mb = load_manifest(a / "manifest.json", a), load_manifest(b / "manifest.json", b)
    lines = [
        f"A: {a} ({ma['producer']['id']}, {ma['engine']})",
        f"B: {b} ({mb['producer']['id']}, {mb['engine']})",
    ]
    same = True
    for fmt in sorted(ma["files"].keys() | mb["files"].keys()):
        ea, eb = ma["files"].get(fmt), mb["files"].get(fmt)
        if ea is None or eb is None:
            lines.append(f"{fmt}: only in {'B' if ea is None else 'A'}")
            same = False
            continue
        if ea["sha256"] == eb["sha256"]:
            lines.append(f"{fmt}: identical ({ea['sha256'][:12]})")
            continue
        same = False
        pa, pb = _producer_dir(a) / ea["path"], _producer_dir(b) / eb["path"]
        lines.append(
            f"{fmt}: differs ({ea['sha256'][:12]} vs {eb['sha256'][:12]}, {ea['size']} vs {eb['size']} bytes)"
        )
        if fmt == "graph":
            lines += [
                "  " + line.rstrip("\n")
                for line in difflib.unified_diff(
                    pa.read_text().splitlines(True), pb.read_text().splitlines(True), "A", "B"
                )
            ]
        elif fmt in ("expected", "input"):
            va = flatten(torch.load(pa, weights_only=True))
            vb = flatten(torch.load(pb, weights_only=True))
            for name in sorted(va.keys() & vb.keys()):
                lines.append(f"  {compare_leaf(name, vb[name], va[name]).summary()}")
    return "\n".join(lines), same
