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

ISA classes (harness.isa): the generator writes every class this machine reaches (its own, and
each lower one in a worker capped to it; ``--classes`` narrows that), and ``--check`` compares
class by class, each against the store's files of that class. A class the store holds that this
machine cannot write (a higher CPU's) is named and skipped, never reported as drift; a class
this machine writes that a golden lacks (it was regenerated on a lower CPU) is named too.

Subjects: ``--subject``, else every subject that already has goldens in the store; an empty
store needs ``--subject``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness import manifest as mf
from harness.contents import contents, plain, same_entries, text_diff
from harness.lock import RegenLocked, regen_lock
from harness.store import Golden, iter_goldens

if TYPE_CHECKING:  # the generator imports torch; `qbc --help` and the plugin must not
    from harness.generate import GenerateResult


@dataclass
class GoldenChange:
    """How one golden of today's producer differs between two stores."""

    id: str
    status: str  # added, removed, changed, unchanged
    #: per differing format, what differs (sha256, entries, or the leaf statistics); a format
    #: of an ISA class other than the old golden's own is keyed ``<format> [<class>]``
    formats: dict[str, str] = field(default_factory=dict)
    #: the largest change of the ``expected`` output in quantization steps (None: not compared)
    max_steps: float | None = None
    #: ISA class -> files compared in it
    compared: dict[str, int] = field(default_factory=dict)
    #: ISA classes the old golden holds and the new one does not (not written here)
    missing_classes: list[str] = field(default_factory=list)
    #: ISA classes the new golden holds and the old one does not
    new_classes: list[str] = field(default_factory=list)
    #: ``<format> [<class>]`` -> why the two files cannot be compared (harness.isa.Gap: one was
    #: written by a real CPU of that class, the other by capping a CPU that differs there)
    gapped: dict[str, str] = field(default_factory=dict)


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
    """Golden ``a`` (old) against ``b`` (new), class by class: every ISA class both hold."""
    change = GoldenChange(a.id, "unchanged")
    if a.manifest is None or b.manifest is None:
        change.status = "changed"
        change.formats["manifest"] = f"unusable manifest: {a.problem or b.problem}"
        return change
    change.missing_classes = [c for c in a.manifest.classes if c not in b.manifest.classes]
    change.new_classes = [c for c in b.manifest.classes if c not in a.manifest.classes]
    for cls in b.manifest.classes:
        if cls not in a.manifest.classes:
            continue
        label = "" if cls == a.manifest.isa_class == b.manifest.isa_class else f" [{cls}]"
        _compare_class(a, b, cls, label, change)
    if change.formats:
        change.status = "changed"
    return change


def _compare_class(a: Golden, b: Golden, cls: str, label: str, change: GoldenChange) -> None:
    from harness.isa import emulation_gap
    from harness.policy import compare_leaf, flatten
    from harness.subjects import get_case

    trusted_load = get_case(a.subject, a.case).trusted_load
    fa, fb = a.manifest.files_for(cls), b.manifest.files_for(cls)  # type: ignore[union-attr]
    for fmt in sorted(set(fa) | set(fb)):
        key = f"{fmt}{label}"
        ea, eb = fa.get(fmt), fb.get(fmt)
        gaps = [emulation_gap(a.subject, a.engine, fmt, cls, _writer_cpu(g)) for g in (a, b)]
        if (gaps[0] is None) != (gaps[1] is None):
            gap = gaps[0] or gaps[1]
            change.gapped[f"{fmt} [{cls}]"] = gap.reason  # type: ignore[union-attr]
            continue
        change.compared[cls] = change.compared.get(cls, 0) + 1
        if ea is None or eb is None:
            change.formats[key] = f"only in the {'new' if ea is None else 'old'} golden"
            continue
        if ea.sha256 == eb.sha256 or same_entries(a.path(fmt, cls), b.path(fmt, cls)):
            continue  # an archive re-stamped with another time holds the same bytes
        hashes = f"sha256 {ea.sha256[:16]} (old) != {eb.sha256[:16]} (new)"
        if eb.deterministic and fmt != "expected":
            # bit-identity is the contract; loading would only add risk (TorchScript runs code)
            change.formats[key] = hashes
            continue
        trusted = fmt in trusted_load
        va = flatten(plain(contents(a.path(fmt, cls), trusted)))
        vb = flatten(plain(contents(b.path(fmt, cls), trusted)))
        if va.keys() != vb.keys():
            change.formats[key] = f"entries differ: {sorted(va.keys() ^ vb.keys())}"
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
            change.formats[key] = "; ".join(differing)
        elif eb.deterministic:
            change.formats[key] = f"{hashes}, same contents"


def _writer_cpu(golden: Golden) -> str:
    """The ISA class of the CPU that wrote the golden (its flags, uncapped)."""
    return mf.class_of_isa_flags((golden.manifest.machine or {}).get("isa") or {})  # type: ignore[union-attr]


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
    isa_classes: Sequence[str] | None = None,
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
            isa_classes=isa_classes,
        )
        changes = compare_stores(before, store, subjects)
    return result, changes


@dataclass
class CheckReport:
    """What ``--check`` found: drift lines, and per ISA class what was compared or skipped."""

    drift: list[str] = field(default_factory=list)
    #: class -> files compared in that class
    compared: dict[str, int] = field(default_factory=dict)
    #: class -> drifting files in that class
    drifting: dict[str, int] = field(default_factory=dict)
    #: class -> why the store's files of that class were not compared here
    skipped: dict[str, str] = field(default_factory=dict)
    #: class -> goldens of the store that lack a class this machine writes (not drift)
    not_committed: dict[str, int] = field(default_factory=dict)
    #: class -> (files not comparable, why): harness.isa.Gap
    gapped: dict[str, tuple[int, str]] = field(default_factory=dict)

    def class_lines(self) -> list[str]:
        from harness.isa import CLASSES

        lines = []
        for cls in CLASSES:
            if cls in self.compared:
                bad = self.drifting.get(cls, 0)
                lines.append(
                    f"  {cls}: {self.compared[cls]} files compared, "
                    + (f"{bad} drifting" if bad else "no drift")
                )
            if cls in self.skipped:
                lines.append(f"  {cls}: in the store, not compared here: {self.skipped[cls]}")
            if cls in self.gapped:
                n, why = self.gapped[cls]
                lines.append(f"  {cls}: {n} files not comparable (capping cannot reproduce: {why})")
            if cls in self.not_committed:
                lines.append(
                    f"  {cls}: written here, absent from {self.not_committed[cls]} stored "
                    "goldens (written where it was out of reach; verified there by capping)"
                )
        return lines


def report_changes(
    changes: Sequence[GoldenChange], unreachable: dict[str, str] | None = None
) -> CheckReport:
    """A --check report from the changes between the store (old) and a fresh generation (new);
    ``unreachable``: the classes this machine does not write, and why."""
    report = CheckReport()
    for c in changes:
        if c.status == "removed":
            report.drift.append(f"{c.id}: committed golden not regenerated")
        elif c.status == "added":
            report.drift.append(f"{c.id}: regenerated golden not committed")
        else:
            report.drift += [f"{c.id}/{fmt}: {what}" for fmt, what in c.formats.items()]
            for fmt in c.formats:
                cls = fmt.rsplit("[", 1)[1].rstrip("]") if "[" in fmt else _own(c)
                report.drifting[cls] = report.drifting.get(cls, 0) + 1
        for cls, n in c.compared.items():
            report.compared[cls] = report.compared.get(cls, 0) + n
        for cls in c.missing_classes:
            report.skipped[cls] = (unreachable or {}).get(cls, "not written by this run")
        for cls in c.new_classes:
            report.not_committed[cls] = report.not_committed.get(cls, 0) + 1
        for key, why in c.gapped.items():
            cls = key.rsplit("[", 1)[1].rstrip("]")
            report.gapped[cls] = (report.gapped.get(cls, (0, why))[0] + 1, why)
    return report


def _own(change: GoldenChange) -> str:
    # a format without a class label is of the class both goldens computed in natively
    from harness.isa import machine_class

    return machine_class()


def check(
    store: Path, subjects: Sequence[str], command: str, isa_classes: Sequence[str] | None = None
) -> CheckReport:
    """Drift between the store and a fresh generation of today's producers, class by class."""
    from harness.generate import generate

    with tempfile.TemporaryDirectory(prefix="qbc-regen-check-") as tmp:
        result = generate(
            Path(tmp), subjects=subjects, command=command, progress=True, isa_classes=isa_classes
        )
        changes = compare_stores(Path(store), Path(tmp), subjects)
    return report_changes(changes, result.unreachable)


def accept(store: Path, subjects: Sequence[str] | None) -> list[str]:
    """``pytest --qbc-update``: regenerate today's producer of the subjects in scope (given, or
    present in the store) and describe the change."""
    names = subjects_to_regenerate(store, subjects)
    result, changes = regenerate(store, names, command="pytest --qbc-update")
    lines = [f"skipped {gid}: {reason}" for gid, reason in result.skipped]
    lines += summary_lines(changes, [f"{s}/{mf.producer_id(subject=s)}" for s in names])
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
        "--classes",
        default="all",
        help="ISA classes below this machine's own to write too: 'all' (default: every class "
        "reachable by capping), 'own' (none), or a comma-separated list",
    )
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
    producers = [f"{s}/{mf.producer_id(subject=s)}" for s in subjects]
    command = prog + (f" --subject {' --subject '.join(args.subject)}" if args.subject else "")
    wanted = getattr(args, "classes", "all")  # `qbc generate` has no --classes: every class
    classes = None if wanted == "all" else [c for c in wanted.split(",") if c != "own"]
    if args.check:
        if args.case or args.engine:
            print(
                f"{prog}: --check compares whole producers; drop --case/--engine", file=sys.stderr
            )
            return 2
        from harness import isa

        print(f"ISA class of this machine: {isa.detect().describe()}")
        report = check(store, subjects, command, classes)
        for line in report.drift:
            print(f"DRIFT {line}")
        for line in report.class_lines():
            print(line)
        n = len(report.drift)
        print(f"{', '.join(producers)}: {'no drift' if not n else f'{n} drifting files'}")
        return 1 if n else 0
    result, changes = regenerate(
        store, subjects, args.case, args.engine, command=command, progress=True,
        isa_classes=classes,
    )  # fmt: skip
    for gid, reason in result.skipped:
        print(f"skipped {gid}: {reason}")
    for line in summary_lines(changes, producers):
        print(line)
    return 0


def main(argv: list[str] | None = None, prog: str = "qbc regen") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv), prog)
