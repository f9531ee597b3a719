#!/usr/bin/env python
"""Measure which torch release reads which release's ``.pt2`` (torch.export.save) archives.

    <venv of each release>/bin/python tools/probe_pt2.py write DIR   # save w-<release>.pt2
    <venv of each release>/bin/python tools/probe_pt2.py read DIR [qbc]   # load every w-*.pt2
    python tools/probe_pt2.py table DIR [qbc]                             # writer x reader table

``write`` exports a tiny program (quantized_decomposed quantize/dequantize, then a Linear) with
the running torch, saves it with its input and output, and prints the archive's entries (the
layout). ``read`` loads every archive in DIR with ``torch.export.load`` (or, given ``qbc``, with
qbc's own reader ``harness.formats.pt2.load``), runs it, and writes one JSON line per archive to
``DIR/read-<reader>-<release>.jsonl``: ok, mismatch, or the exception type and message, plus the
warnings torch raised. ``table`` prints the Markdown matrix docs/versions.md shows.
"""

from __future__ import annotations

import json
import sys
import warnings
import zipfile
from pathlib import Path


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("+")[0].split(".") if p.isdigit())


def write(out: Path) -> None:
    import torch
    import torch.ao.quantization.fx._decomposed

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ops = torch.ops.quantized_decomposed
            q = ops.quantize_per_tensor(x, 0.05, 3, -128, 127, torch.int8)
            return self.lin(ops.dequantize_per_tensor(q, 0.05, 3, -128, 127, torch.int8))

    release = torch.__version__.split("+")[0]
    torch.manual_seed(0)
    model, x = Tiny().eval(), torch.randn(2, 4)
    path = out / f"w-{release}.pt2"
    torch.export.save(torch.export.export(model, (x,), strict=False), str(path))
    torch.save({"x": x, "y": model(x)}, out / f"w-{release}.io.pt")
    print(json.dumps({"writer": release, "entries": sorted(zipfile.ZipFile(path).namelist())}))


def read(out: Path, reader: str = "torch") -> None:
    import torch
    import torch.ao.quantization.fx._decomposed

    if reader == "qbc":  # qbc's own reader (harness/formats/pt2.py), as the runner loads goldens
        from harness.formats import pt2

        load = pt2.load
    else:
        load = torch.export.load
    release = torch.__version__.split("+")[0]
    lines = []
    for path in sorted(out.glob("w-*.pt2")):
        io = torch.load(path.with_suffix(".io.pt"), weights_only=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                y = load(path).module()(io["x"])
                result = "ok" if torch.equal(y, io["y"]) else "mismatch"
            except Exception as exc:
                result = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        said = sorted(
            {f"{w.category.__name__}: {str(w.message).splitlines()[0][:120]}" for w in caught}
        )
        lines.append(
            {"reader": release, "writer": path.stem[2:], "result": result, "warnings": said}
        )
    (out / f"read-{reader}-{release}.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines)
    )


def table(out: Path, reader: str = "torch") -> None:
    rows = [
        json.loads(line)
        for f in out.glob(f"read-{reader}-*.jsonl")
        for line in f.read_text().splitlines()
    ]
    writers = sorted({r["writer"] for r in rows}, key=_release)
    readers = sorted({r["reader"] for r in rows}, key=_release)
    cell = {(r["writer"], r["reader"]): r["result"] for r in rows}
    print("| written by ↓ / read by → | " + " | ".join(readers) + " |")
    print("|---" * (len(readers) + 1) + "|")
    for w in writers:
        cells = [cell.get((w, r), "-") for r in readers]
        print(
            f"| {w} | " + " | ".join("ok" if c == "ok" else c.split(":")[0] for c in cells) + " |"
        )


if __name__ == "__main__":
    # read / table take an optional third argument: "torch" (torch.export.load, the default) or
    # "qbc" (harness.formats.pt2.load, what the runner uses; needs qbc importable)
    command, folder, *reader = sys.argv[1:]
    if command == "write":
        write(Path(folder))
    else:
        {"read": read, "table": table}[command](Path(folder), *reader)
