"""Regeneration of today's goldens, what it changed, and the determinism gate.

    qbc regen [--store golden] [--subject S ...] [--case GLOB] [--engine E ...]
    qbc regen --check          # regenerate into a temporary store and compare (CI gate)
    pytest --qbc-update        # the same regeneration, from pytest (harness.pytest_plugin)

Only today's producer of each subject (``harness.manifest.producer_id``) is ever written; a past
producer's goldens are immutable. The write is atomic per producer (harness.store).

Every regeneration says what it changed, comparing the goldens before and after: added, changed
(with the formats whose contents changed), unchanged, removed, and the largest change of an
``expected`` output in quantization steps of the output (harness.policy.compare_leaf).

``--check`` compares a fresh generation with the store: deterministic formats must be
bit-identical; the others (state_dict_legacy, whose pickle embeds per-process keys; TorchScript
archives, whose debug tables record call stacks) must have equal contents (a TorchScript
archive's code and every storage, packed parameters included, compared without loading it). A golden
present on one side only is drift too. Exit status 0: no drift; 1: drift (listed); 2: usage
error.

Subjects: ``--subject``, else every subject that already has goldens in the store; an empty
store needs ``--subject``.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import manifest as mf
from harness.lock import RegenLocked, regen_lock
from harness.store import Golden, iter_goldens

if TYPE_CHECKING:  # the generator imports torch; `qbc --help` and the plugin must not
    from harness.generate import GenerateResult


@dataclass
class GoldenChange:
    """How one golden of today's producer differs between two stores."""

    id: str
    status: str  # added, removed, changed, unchanged
    #: per differing format, what differs (sha256, entries, or the leaf statistics)
    formats: dict[str, str] = field(default_factory=dict)
    #: the largest change of the ``expected`` output in quantization steps (None: not compared)
    max_steps: float | None = None


class NoSubjects(ValueError):
    """Nothing says which subjects to regenerate."""


def subjects_to_regenerate(store: Path, subjects: Sequence[str] | None) -> list[str]:
    """The subjects given, else those with goldens in the store (NoSubjects if none)."""
    if subjects:
        return list(dict.fromkeys(subjects))
    present = sorted({g.subject for g in iter_goldens(store)}) if Path(store).is_dir() else []
    if not present:
        from harness.subjects import subject_names

        raise NoSubjects(
            f"the golden store {store} has no goldens yet: name the subjects to write "
            f"(--subject; known: {', '.join(subject_names())})"
        )
    return present


def contents(path: Path, trusted: bool = False) -> Any:
    """What a tensor or TorchScript file holds, for comparing two of them: ``torch.load``
    (weights_only unless ``trusted``), or a TorchScript archive's entries (:func:`archive`)."""
    import torch

    if zipfile.is_zipfile(path) and any(
        n.endswith("/constants.pkl") for n in zipfile.ZipFile(path).namelist()
    ):
        return archive(path)
    try:
        return torch.load(path, weights_only=True)
    except Exception:
        if not trusted:  # full unpickling can run code: only for a case's declared trusted loads
            raise
        # Only reached for files the generator itself just wrote or the store holds and whose
        # hash matched (e.g. dynamic LSTM packed params): trusted by construction of this check.
        return torch.load(path, weights_only=False)


#: TorchScript archive entries that record where and when it was written, not what it holds:
#: debug tables (source paths, call stacks) and a per-save id
_ARCHIVE_NOISE = (".debug_pkl", ".data/serialization_id")
#: TorchScript numbers the classes it compiles per process (``___torch_mangle_28``) and files
#: the first class of a module as ``container.py``, later ones as
#: ``container/___torch_mangle_5.py``: where a class lands says how many modules were scripted
#: before it in that process, not what it is
_MANGLE = re.compile(r"[./]___torch_mangle_\d+")
#: pickle opcodes that say how the stream is laid out, not what it holds
_PICKLE_LAYOUT = {"PROTO", "FRAME"}


def archive(path: Path) -> dict[str, str]:
    """A TorchScript archive's contents without loading it (nothing in it runs): its code as
    text, grouped by the module it defines classes of; its pickles as their opcodes; its
    tensor and packed-parameter storages by sha256. Names lose the archive's top folder (the
    file's name) and class mangling."""
    code: dict[str, list[str]] = {}
    out: dict[str, str] = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            name = info.filename.split("/", 1)[-1]
            if name.endswith(_ARCHIVE_NOISE):
                continue
            data = z.read(info)
            if name.endswith(".py"):
                text = _MANGLE.sub("", data.decode("utf-8", "replace"))
                code.setdefault(_MANGLE.sub("", name), []).append(text)
            elif name.endswith(".pkl"):
                out[name] = _pickle_text(data)
            else:
                out[name] = hashlib.sha256(data).hexdigest()
    out.update({name: "".join(sorted(texts)) for name, texts in code.items()})
    return out


def _pickle_text(data: bytes) -> str:
    """A pickle as its opcodes and arguments, one per line (read, never executed)."""
    import pickletools

    lines = []
    for op, arg, _pos in pickletools.genops(data):
        if op.name not in _PICKLE_LAYOUT:
            lines.append(f"{op.name} {_MANGLE.sub('', repr(arg))}")
    return "\n".join(lines) + "\n"


def text_diff(a: str, b: str, name: str = "") -> list[str]:
    """A unified diff of two texts (one line of context), old ``A`` to new ``B``."""
    label = f" {name}" if name else ""
    return [
        line.rstrip("\n")
        for line in difflib.unified_diff(
            a.splitlines(True), b.splitlines(True), f"A{label}", f"B{label}", n=1
        )
    ]


def plain(value: Any) -> Any:
    """ScriptObjects (packed params) compared through their serialized state."""
    import torch

    if isinstance(value, torch.ScriptObject):
        return plain(value.__getstate__())
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(plain(v) for v in value)
    return value


def compare_stores(old: Path, new: Path, subjects: Sequence[str]) -> list[GoldenChange]:
    """Every golden of today's producer of ``subjects`` in ``old`` and ``new``, compared."""
    from harness.compat import expected_torch_deprecations

    with expected_torch_deprecations():  # torch_ao goldens hold quantized tensors
        return _compare(old, new, subjects)


def _index(store: Path, subjects: Sequence[str]) -> dict[str, Golden]:
    if not Path(store).is_dir():
        return {}
    today = {s: mf.producer_id(subject=s) for s in subjects}
    return {g.id: g for g in iter_goldens(store) if today.get(g.subject) == g.producer}


def _compare(old_store: Path, new_store: Path, subjects: Sequence[str]) -> list[GoldenChange]:
    old, new = _index(old_store, subjects), _index(new_store, subjects)
    changes = [GoldenChange(gid, "removed") for gid in old.keys() - new.keys()]
    changes += [GoldenChange(gid, "added") for gid in new.keys() - old.keys()]
    for gid in old.keys() & new.keys():
        change = _compare_golden(old[gid], new[gid])
        changes.append(change)
    return sorted(changes, key=lambda c: c.id)


def _compare_golden(a: Golden, b: Golden) -> GoldenChange:
    from harness.policy import compare_leaf, flatten
    from harness.subjects import get_case

    change = GoldenChange(a.id, "unchanged")
    trusted_load = get_case(a.subject, a.case).trusted_load
    for fmt in sorted(set(a.formats) | set(b.formats)):
        ea, eb = a.manifest["files"].get(fmt), b.manifest["files"].get(fmt)
        if ea is None or eb is None:
            change.formats[fmt] = f"only in the {'new' if ea is None else 'old'} golden"
            continue
        if ea["sha256"] == eb["sha256"]:
            continue
        deterministic = eb.get("deterministic", True)
        hashes = f"sha256 {ea['sha256'][:16]} (old) != {eb['sha256'][:16]} (new)"
        if deterministic and fmt != "expected":
            # bit-identity is the contract; loading would only add risk (TorchScript runs code)
            change.formats[fmt] = hashes
            continue
        va = flatten(plain(contents(a.path(fmt), fmt in trusted_load)))
        vb = flatten(plain(contents(b.path(fmt), fmt in trusted_load)))
        if va.keys() != vb.keys():
            change.formats[fmt] = f"entries differ: {sorted(va.keys() ^ vb.keys())}"
            continue
        differing = []
        for name in sorted(va):
            if isinstance(va[name], str) and isinstance(vb[name], str):
                if va[name] != vb[name]:
                    differing.append(
                        f"{name} differs: " + " / ".join(text_diff(va[name], vb[name])[3:8])
                    )
                continue
            stats = compare_leaf(name, vb[name], va[name])
            if stats.problem or stats.max_steps > 0:
                differing.append(stats.summary())
                if fmt == "expected" and stats.problem is None:
                    change.max_steps = max(change.max_steps or 0.0, stats.max_steps)
        if differing:
            change.formats[fmt] = "; ".join(differing)
        elif deterministic:
            change.formats[fmt] = f"{hashes}, same contents"
    if change.formats:
        change.status = "changed"
    return change


def summary_lines(changes: Sequence[GoldenChange], producers: Sequence[str]) -> list[str]:
    """What a regeneration changed: one line per added, changed and removed golden, then the
    counts and the largest change of an expected output."""
    lines = []
    for c in changes:
        if c.status == "changed":
            steps = f" (expected: max {c.max_steps:.4g} steps)" if c.max_steps else ""
            lines.append(f"changed {c.id}: {', '.join(c.formats)}{steps}")
        elif c.status != "unchanged":
            lines.append(f"{c.status} {c.id}")
    counts = {s: sum(c.status == s for c in changes) for s in ("added", "changed", "unchanged")}
    removed = sum(c.status == "removed" for c in changes)
    total = ", ".join(f"{n} {s}" for s, n in counts.items()) + (
        f", {removed} removed" if removed else ""
    )
    worst = max(
        (c for c in changes if c.max_steps is not None),
        key=lambda c: c.max_steps or 0.0,
        default=None,
    )
    drift = (
        f"; largest drift: {worst.max_steps:.4g} steps ({worst.id}/expected)"
        if worst is not None and worst.max_steps
        else ""
    )
    lines.append(f"{', '.join(producers)}: {total} goldens{drift}")
    return lines


def regenerate(
    store: Path,
    subjects: Sequence[str],
    case_glob: str | None = None,
    engines: Sequence[str] | None = None,
    command: str | None = None,
    progress: bool = False,
) -> tuple[GenerateResult, list[GoldenChange]]:
    """Write today's goldens of ``subjects`` into ``store``; return what was written and how
    each golden of today's producer changed."""
    from harness.generate import generate

    store = Path(store)
    with tempfile.TemporaryDirectory(prefix="qbc-regen-before-") as tmp:
        before = Path(tmp) / "golden"
        for subject in subjects:  # today's producer folders only: the rest cannot change
            src = store / subject / mf.producer_id(subject=subject)
            if src.is_dir():
                shutil.copytree(src, before / subject / src.name, symlinks=True)
        result = generate(
            store,
            subjects=subjects,
            case_glob=case_glob,
            engines=engines,
            command=command,
            progress=progress,
        )
        changes = compare_stores(before, store, subjects)
    return result, changes


def check(store: Path, subjects: Sequence[str], command: str) -> list[str]:
    """Drift between the store and a fresh generation of today's producers (empty: none)."""
    from harness.generate import generate

    with tempfile.TemporaryDirectory(prefix="qbc-regen-check-") as tmp:
        generate(Path(tmp), subjects=subjects, command=command, progress=True)
        changes = compare_stores(Path(store), Path(tmp), subjects)
    drift = []
    for c in changes:
        if c.status == "removed":
            drift.append(f"{c.id}: committed golden not regenerated")
        elif c.status == "added":
            drift.append(f"{c.id}: regenerated golden not committed")
        else:
            drift += [f"{c.id}/{fmt}: {what}" for fmt, what in c.formats.items()]
    return drift


def accept(store: Path, subjects: Sequence[str] | None) -> list[str]:
    """``pytest --qbc-update``: regenerate today's producer of the subjects in scope (given, or
    present in the store) and describe the change."""
    names = subjects_to_regenerate(store, subjects)
    result, changes = regenerate(store, names, command="pytest --qbc-update")
    lines = [f"skipped {gid}: {reason}" for gid, reason in result.skipped]
    lines += summary_lines(changes, [mf.producer_id(subject=s) for s in names])
    past = sorted(
        {g.producer for g in iter_goldens(store) if g.subject in names}
        - {mf.producer_id(subject=s) for s in names}
    )
    if past:
        lines.append(
            f"past producers are never rewritten ({', '.join(past)}): a failure there is a "
            "regression, or a known break to record"
        )
    return lines


def add_arguments(p: argparse.ArgumentParser, default_store: str = "golden") -> None:
    p.add_argument("--store", default=default_store, help=f"store root (default: {default_store})")
    p.add_argument(
        "--subject",
        action="append",
        help="subject (repeatable; default: the subjects already in the store)",
    )
    p.add_argument("--producer", help="must be today's producer (refuses any other)")
    p.add_argument("--check", action="store_true", help="regenerate into a temp store and compare")
    p.add_argument("--case", help="regenerate only cases matching this glob (others are kept)")
    p.add_argument("--engine", action="append", help="regenerate only this engine (repeatable)")
    p.add_argument(
        "--index",
        action="store_true",
        help="only rebuild the store index (golden/index.json) from the store as it is, after a "
        "legitimate change made otherwise; review its diff, then commit it",
    )


def run(args: argparse.Namespace, prog: str = "qbc regen") -> int:
    """Carry out ``qbc regen`` (or ``tools/regen_goldens.py``); user errors are messages."""
    try:
        return _run(args, prog)
    except (KeyError, RegenLocked, NoSubjects) as exc:  # unknown name, concurrent regen, ...
        print(f"{prog}: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, prog: str) -> int:
    from harness.subjects import get_subject, subject_names

    if args.producer:
        named = mf.producer_parts(args.producer).subject
        today = mf.producer_id(subject=named if named in subject_names() else None)
        if args.producer != today:
            print(
                f"{prog}: refusing to write producer {args.producer!r}: this environment is "
                f"{today!r}, and a past producer's goldens are immutable",
                file=sys.stderr,
            )
            return 2
    store = Path(args.store)
    if getattr(args, "index", False):  # qbc generate builds its own namespace
        from harness import index
        from harness.verify import catalogue_expectations

        # today's producers that hold the whole catalogue are complete from now on (verify
        # then fails on a golden or format of theirs that goes missing)
        present = {(g.subject, g.producer, g.engine, g.case): g for g in iter_goldens(store)}
        complete = {
            producer
            for producer, expected in catalogue_expectations().items()
            if all(
                (g := present.get((*producer.split("/"), *rel.split("/")))) is not None
                and set(formats) <= set(g.formats)
                for rel, formats in expected.items()
            )
        }
        with regen_lock(store):  # never beside a regeneration writing the store
            written = index.write(store, complete)
        print(f"{prog}: wrote {written} ({len(index.build(store)['goldens'])} goldens)")
        return 0
    subjects = subjects_to_regenerate(store, args.subject)
    for name in subjects:
        get_subject(name)  # UnknownName naming it, before anything is written
    producers = [mf.producer_id(subject=s) for s in subjects]
    command = prog + (f" --subject {' --subject '.join(args.subject)}" if args.subject else "")
    if args.check:
        if args.case or args.engine:
            print(
                f"{prog}: --check compares whole producers; drop --case/--engine", file=sys.stderr
            )
            return 2
        drift = check(store, subjects, command)
        for line in drift:
            print(f"DRIFT {line}")
        print(
            f"{', '.join(producers)}: {'no drift' if not drift else f'{len(drift)} drifting files'}"
        )
        return 1 if drift else 0
    result, changes = regenerate(
        store, subjects, args.case, args.engine, command=command, progress=True
    )
    for gid, reason in result.skipped:
        print(f"skipped {gid}: {reason}")
    for line in summary_lines(changes, producers):
        print(line)
    return 0


def main(argv: list[str] | None = None, prog: str = "qbc regen") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv), prog)
