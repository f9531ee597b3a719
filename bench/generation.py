"""Generation: time to regenerate one producer's goldens, and what the store costs in bytes.

    python bench/generation.py [--repeats 1] [--subject torch_ao] [--engine fbgemm ...]

Regenerates the current producer's goldens of one subject with ``tools/regen_goldens.py
--store <temp dir>`` (the committed store is never touched), then verifies the fresh store with
the runner loop (``bench/runner_overhead.py``'s runner child) in the same run: the ratio
generation / verification says how much dearer writing a golden is than checking it.

Bytes come from the committed store's manifests: *logical* bytes of a golden are the sizes of
the files its manifest lists (what a reader loads); *physical* bytes are what the producer's
folder holds on disk (binary blobs are content-addressed, so files shared by goldens, e.g. the
same seeded input on four engines, are stored once).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, REPO, STORE, Timing, header, run_timed


def store_bytes(store: Path = STORE) -> dict[str, Any]:
    """Logical bytes per golden / case / format and physical bytes per producer."""
    per_case: dict[str, list[int]] = defaultdict(list)
    per_format: dict[str, int] = defaultdict(int)
    producers: dict[str, dict[str, int]] = {}
    for producer_dir in sorted(p for p in store.glob("*/*") if p.is_dir()):
        if producer_dir.name.startswith("."):
            continue
        pid = f"{producer_dir.parent.name}/{producer_dir.name}"
        logical = goldens = 0
        for manifest in producer_dir.glob("*/*/manifest.json"):
            files = json.loads(manifest.read_text())["files"]
            size = sum(e["size"] for e in files.values()) + manifest.stat().st_size
            per_case[f"{producer_dir.parent.name}/{manifest.parent.name}"].append(size)
            for fmt, e in files.items():
                per_format[fmt] += e["size"]
            logical += size
            goldens += 1
        physical = sum(p.stat().st_size for p in producer_dir.rglob("*") if p.is_file())
        producers[pid] = {"goldens": goldens, "logical": logical, "physical": physical}
    return {"per_case": dict(per_case), "per_format": dict(per_format), "producers": producers}


def print_bytes(b: dict[str, Any]) -> None:
    for pid, p in b["producers"].items():
        print(
            f"  producer {pid}: {p['goldens']} goldens, {p['physical'] / 1e6:.2f} MB on disk, "
            f"{p['logical'] / 1e6:.2f} MB logical (dedup {p['logical'] / max(p['physical'], 1):.2f}x), "
            f"{p['physical'] / max(p['goldens'], 1) / 1e3:.1f} kB per golden"
        )
    print("  per case (logical kB per golden, median over engines):")
    rows = sorted(b["per_case"].items(), key=lambda kv: -statistics.median(kv[1]))
    for case, sizes in rows:
        print(f"    {case:<44}{statistics.median(sizes) / 1e3:>8.1f} kB  x{len(sizes)} engines")
    total = sum(b["per_format"].values()) or 1
    print(
        "  per format (share of logical bytes): "
        + ", ".join(
            f"{f} {n / total:.0%}"
            for f, n in sorted(b["per_format"].items(), key=lambda kv: -kv[1])
        )
    )


def bench(
    repeats: int = 1, subject: str = "torch_ao", engines: list[str] | None = None
) -> dict[str, Any]:
    header(f"generation: regenerate one producer ({subject}) into a temp store")
    gen, ver = Timing("generate"), Timing("verify (runner loop)")
    n_goldens = 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="qbc-bench-gen-") as tmp:
            store = Path(tmp) / "golden"
            cmd = [PYTHON, "tools/regen_goldens.py", "--store", str(store), "--subject", subject]
            for e in engines or ():
                cmd += ["--engine", e]
            run_timed(cmd, gen)
            n_goldens = sum(1 for _ in store.glob("*/*/*/*/manifest.json"))
            run_timed(
                [
                    PYTHON,
                    str(REPO / "bench" / "runner_overhead.py"),
                    "--child",
                    "runner",
                    "--store",
                    str(store),
                ],
                ver,
            )
            fresh = store_bytes(store)
    for t in (gen, ver):
        print("  " + t.describe())
    ratio = gen.wall_med / ver.wall_med
    per_golden = gen.wall_med / max(n_goldens, 1)
    print(
        f"  generate: {n_goldens} goldens, {per_golden:.2f}s per golden (wall, incl. startup); "
        f"fresh producer {sum(p['physical'] for p in fresh['producers'].values()) / 1e6:.2f} MB"
    )
    print(f"  generate/verify (wall): {ratio:.2f}x; (cpu): {gen.cpu_med / ver.cpu_med:.2f}x")
    print("  committed store:")
    committed = store_bytes(STORE)
    print_bytes(committed)
    return {
        "generate_wall": gen.wall_med,
        "goldens": n_goldens,
        "per_golden": per_golden,
        "generate_over_verify": ratio,
        "bytes": committed["producers"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--subject", default="torch_ao")
    p.add_argument("--engine", action="append", help="only this engine (repeatable)")
    p.add_argument("--bytes-only", action="store_true", help="only the store's bytes")
    args = p.parse_args(argv)
    if args.bytes_only:
        print_bytes(store_bytes())
        return 0
    bench(args.repeats, args.subject, args.engine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
