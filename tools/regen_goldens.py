#!/usr/bin/env python
"""Regenerate the current producer's goldens, or check that regeneration is deterministic.

    python tools/regen_goldens.py                 # rewrite golden/<subject>/<current producer>/
    python tools/regen_goldens.py --check         # regenerate into a temp store and compare
    python tools/regen_goldens.py --producer torch-2.6.0_qbc-0.1.0   # refused: not ours

Only the producer of the running environment (torch release + qbc version) can be written; a
past producer's goldens are immutable. The write is atomic per producer (harness.store).

``--check`` is the CI determinism gate: every golden of the current producer must come out of
a fresh generation with bit-identical files for deterministic formats, and equal loaded contents
(exactly, by the tolerance machinery with zero tolerance) for the others (state_dict_legacy,
whose pickle embeds per-process keys). A golden present on one side only is drift too.
Exit status 0: no drift; 1: drift (listed); 2: usage error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _contents(path: Path, trusted: bool = False) -> Any:
    import torch

    if zipfile.is_zipfile(path) and any(
        n.endswith("/constants.pkl") for n in zipfile.ZipFile(path).namelist()
    ):
        # A TorchScript archive: its debug tables record the Python call stack at trace time
        # (paths, line numbers), so compare what runs instead: every submodule's code and state.
        module = torch.jit.load(str(path))
        code = [getattr(m, "code", "") for m in module.modules()]
        return {"code": code, "state": module.state_dict()}
    try:
        return torch.load(path, weights_only=True)
    except Exception:
        if not trusted:  # full unpickling can run code: only for a case's declared trusted loads
            raise
        # Only reached for files the generator itself just wrote or the committed store holds
        # (e.g. dynamic LSTM packed params): trusted by construction of this check.
        return torch.load(path, weights_only=False)


def _plain(value: Any) -> Any:
    """ScriptObjects (packed params) compared through their serialized state."""
    import torch

    if isinstance(value, torch.ScriptObject):
        return _plain(value.__getstate__())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value


def compare_producer(committed: Path, fresh: Path, subjects: list[str], producer: str) -> list[str]:
    """Drift between the committed goldens of ``producer`` and a fresh regeneration."""
    from harness.compat import expected_torch_deprecations

    with expected_torch_deprecations():  # torch_ao goldens hold quantized tensors
        return _compare(committed, fresh, subjects, producer)


def _compare(committed: Path, fresh: Path, subjects: list[str], producer: str) -> list[str]:
    from harness.policy import compare_leaf, flatten
    from harness.store import iter_goldens
    from harness.subjects import get_case

    def index(store: Path) -> dict[str, Any]:
        return {
            g.id: g for g in iter_goldens(store) if g.producer == producer and g.subject in subjects
        }

    old, new = index(committed), index(fresh)
    drift = [f"{gid}: committed golden not regenerated" for gid in sorted(old.keys() - new.keys())]
    drift += [f"{gid}: regenerated golden not committed" for gid in sorted(new.keys() - old.keys())]
    for gid in sorted(old.keys() & new.keys()):
        a, b = old[gid], new[gid]
        for fmt in sorted(a.formats + [f for f in b.formats if f not in a.formats]):
            ea, eb = a.manifest["files"].get(fmt), b.manifest["files"].get(fmt)
            if ea is None or eb is None:
                drift.append(f"{gid}/{fmt}: only in {'fresh' if ea is None else 'committed'}")
                continue
            if ea["sha256"] == eb["sha256"]:
                continue
            if eb.get("deterministic", True):
                drift.append(
                    f"{gid}/{fmt}: sha256 {ea['sha256'][:16]} (committed) != {eb['sha256'][:16]} (fresh)"
                )
                continue
            trusted = fmt in get_case(a.subject, a.case).trusted_load
            va, vb = (
                flatten(_plain(_contents(a.path(fmt), trusted))),
                flatten(_plain(_contents(b.path(fmt), trusted))),
            )
            if va.keys() != vb.keys():
                drift.append(f"{gid}/{fmt}: entries differ: {sorted(va.keys() ^ vb.keys())}")
                continue
            for name in sorted(va):
                stats = compare_leaf(name, vb[name], va[name])
                if stats.problem or stats.max_steps > 0:
                    drift.append(f"{gid}/{fmt}: {stats.summary()}")
    return drift


def main(argv: list[str] | None = None) -> int:
    from harness.lock import RegenLocked

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=str(REPO / "golden"))
    p.add_argument("--subject", action="append", help="subject (repeatable; default: all)")
    p.add_argument("--producer", help="must be the current producer (refuses any other)")
    p.add_argument("--check", action="store_true", help="regenerate into a temp store and compare")
    p.add_argument("--case", help="regenerate only cases matching this glob (others are kept)")
    p.add_argument("--engine", action="append", help="regenerate only this engine (repeatable)")
    args = p.parse_args(argv)
    try:
        return _run(args)
    except (KeyError, RegenLocked) as exc:  # unknown subject/case/engine, or a concurrent regen
        print(f"regen_goldens: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from harness.generate import generate
    from harness.manifest import producer_id
    from harness.subjects import subject_names

    current = producer_id()
    if args.producer and args.producer != current:
        print(
            f"refusing to write producer {args.producer!r}: this environment is {current!r}, "
            "and a past producer's goldens are immutable",
            file=sys.stderr,
        )
        return 2
    subjects = args.subject or subject_names()
    command = "python tools/regen_goldens.py" + (
        f" --subject {' --subject '.join(args.subject)}" if args.subject else ""
    )
    if not args.check:
        result = generate(
            Path(args.store),
            subjects=subjects,
            case_glob=args.case,
            engines=args.engine,
            command=command,
            progress=True,
        )
        for gid, reason in result.skipped:
            print(f"skipped {gid}: {reason}")
        print(f"{current}: wrote {len(result.written)} goldens")
        return 0
    with tempfile.TemporaryDirectory(prefix="qbc-regen-check-") as tmp:
        generate(Path(tmp), subjects=subjects, command=command, progress=True)
        drift = compare_producer(Path(args.store), Path(tmp), subjects, current)
    for line in drift:
        print(f"DRIFT {line}")
    print(f"{current}: {'no drift' if not drift else f'{len(drift)} drifting files'}")
    return 1 if drift else 0


if __name__ == "__main__":
    sys.exit(main())
