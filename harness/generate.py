"""The generator: build every selected case per engine with today's code and write its golden.

Only the current producer of each subject (``harness.manifest.producer_id(subject=...)``) is
ever written. The whole
producer folder is built in a temporary sibling and renamed into place (see harness.store).

ISA classes (harness.isa): the native kernels give different numbers, and sometimes different
bytes, on different CPUs. The generator writes each golden in this process's own class, then
builds it again in every lower class this machine reaches by capping, each in a worker process
started with that class's cap environment (harness.isolation; the kernel libraries read their
caps only at start-up). A file that comes out different in a class (byte for byte, or for a
format that is not byte-deterministic, in content) is stored too (blobs are content-addressed,
so a file shared by several classes is stored once) and listed under that class in the
manifest; classes it cannot reach are named with the reason (harness.manifest).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import atomic, index, isa, isolation
from harness import manifest as mf
from harness import store as st
from harness.cases import BuildContext, Case, select_cases
from harness.contents import contents, plain, same_entries
from harness.formats import get_format
from harness.lock import locked_regeneration
from harness.subjects import check_engine, get_case, get_subject, subject_names

#: seconds one golden's build may take in a capped worker
CLASS_BUILD_TIMEOUT = 900.0


@dataclass
class GenerateResult:
    written: list[str] = field(default_factory=list)  # golden ids
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (golden id, reason)
    producer_dirs: list[Path] = field(default_factory=list)
    #: ISA classes written (this process's own first) and those skipped, with the reason
    classes: list[str] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    #: ``subject/producer`` written by a full (unfiltered) run
    complete: set[str] = field(default_factory=set)


def write_files(case: Case, engine: str, out_dir: Path) -> dict[str, Path]:
    """Build (case, engine) with today's code and write every format of it into ``out_dir``."""
    subject = get_subject(case.subject)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    with subject.use_engine(engine):
        built = case.builder(BuildContext(case, engine))
        for name in case.formats_for(engine):
            fmt = get_format(name)
            path = out_dir / fmt.filename
            fmt.write(built, path)
            paths[name] = path
    return paths


def files_in_worker(subject: str, case: str, engine: str, out_dir: str) -> dict[str, str]:
    """Worker task (plain data in and out): :func:`write_files` of one golden, file paths back."""
    written = write_files(get_case(subject, case), engine, Path(out_dir))
    return {name: str(path) for name, path in written.items()}


def expected_in_worker(subject: str, case: str, engine: str) -> Any:
    """Worker task: today's expected output of (case, engine), computed in the worker's class."""
    c = get_case(subject, case)
    with get_subject(subject).use_engine(engine):
        return c.builder(BuildContext(c, engine)).expected


def _entry(producer_tmp: Path, rel: str, case: Case, name: str, path: Path) -> mf.FileEntry:
    fmt = get_format(name)
    return st.add_file(
        producer_tmp,
        rel,
        path,
        deterministic=fmt.deterministic,
        runs_code_on_load=fmt.runs_code_on_load or name in case.trusted_load,
    )


def write_golden(
    case: Case,
    engine: str,
    producer_tmp: Path,
    command: str,
    capped: dict[str, dict[str, Path]] | None = None,
    unreachable: dict[str, str] | None = None,
) -> None:
    """Build (case, engine) with today's code in this process's ISA class and write its files
    and manifest; ``capped`` holds the same golden's files written in lower classes (class ->
    format -> path), of which those that differ are stored under their class."""
    rel = f"{engine}/{case.name}"
    golden_dir = producer_tmp / rel
    if golden_dir.exists():
        shutil.rmtree(golden_dir)
    golden_dir.mkdir(parents=True)
    own = isa.machine_class()
    files: dict[str, mf.FileEntry] = {}
    class_files: dict[str, dict[str, mf.FileEntry]] = {}
    with tempfile.TemporaryDirectory(prefix="qbc-gen-") as scratch:
        native = write_files(case, engine, Path(scratch))
        for cls, paths in (capped or {}).items():
            class_files[cls] = {
                name: _entry(producer_tmp, rel, case, name, path)
                for name, path in paths.items()
                if differs(native[name], path, name, name in case.trusted_load)
            }
        for name, path in native.items():
            files[name] = _entry(producer_tmp, rel, case, name, path)
    manifest = mf.new_manifest(
        case.subject,
        case.spec(),
        engine,
        case.seed,
        command,
        files=files,
        isa_class=own,
        class_files=class_files,
        unreachable=unreachable,
    )
    mf.write_manifest(golden_dir / st.MANIFEST, manifest)
    atomic.write_step(f"manifest {rel}")


def class_plan(wanted: Sequence[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(lower classes to write by capping, lowest first; class -> why it is not written).

    ``wanted``: the classes asked for (None: every class this machine reaches). This process's
    own class is always written and is not in the first list.
    """
    me = isa.detect()
    capped: list[str] = []
    unreachable: dict[str, str] = {}
    for cls in isa.CLASSES:
        if cls == me.cls:
            continue
        if isa.rank(cls) > isa.rank(me.cls):
            unreachable[cls] = f"above this machine's class ({me.describe()})"
            continue
        try:
            isa.cap_environment(cls, me.cpu)
        except isa.IsaCapError as exc:
            unreachable[cls] = str(exc)
            continue
        if wanted is not None and cls not in wanted:
            unreachable[cls] = "not requested"
            continue
        capped.append(cls)
    return capped, unreachable


@locked_regeneration  # one writer at a time; a second one gets a clear RegenLocked error
def generate(
    store: Path,
    subjects: Sequence[str] | None = None,
    case_glob: str | None = None,
    engines: Sequence[str] | None = None,
    command: str | None = None,
    progress: bool = False,
    isa_classes: Sequence[str] | None = None,
) -> GenerateResult:
    """Write the current producer's goldens for the selection into ``store``.

    A full run (no case or engine filter) rebuilds the producer from scratch, so goldens of
    cases that left the table disappear; a filtered run keeps the other goldens as they were.
    ``isa_classes``: the lower ISA classes to write besides this process's own (None: every
    class reachable by capping).
    """
    from tqdm import tqdm

    command = command or mf.default_command()
    capped_classes, unreachable = class_plan(isa_classes)
    result = GenerateResult(
        classes=[isa.machine_class(), *capped_classes], unreachable=dict(unreachable)
    )
    for subject_name in subjects or subject_names():
        subject = get_subject(subject_name)
        producer = mf.producer_id(subject=subject_name)
        for engine in engines or ():
            check_engine(subject, engine)
        cases = select_cases(subject.cases(), case_glob) if case_glob else list(subject.cases())
        jobs = [
            (case, engine)
            for case in cases
            for engine in (case.engines or subject.engines())
            if not engines or engine in engines
        ]
        if not jobs:
            continue
        partial = bool(case_glob or engines)
        tmp = st.start_producer(store, subject_name, producer, keep_existing=partial)
        try:
            with tempfile.TemporaryDirectory(prefix="qbc-gen-classes-") as class_dir:
                for case, engine in tqdm(
                    jobs,
                    desc=f"generate {subject_name} ({', '.join(result.classes)})",
                    disable=None if progress else True,
                    unit="golden",
                ):
                    gid = f"{subject_name}/{producer}/{engine}/{case.name}"
                    reason = subject.unavailable_reason(engine)
                    if reason:
                        result.skipped.append((gid, reason))
                        continue
                    capped = {
                        cls: _capped_files(case, engine, cls, Path(class_dir) / cls / gid)
                        for cls in capped_classes
                    }
                    write_golden(case, engine, tmp, command, capped, unreachable)
                    result.written.append(gid)
            st.collect_garbage(tmp)
            if not any(tmp.glob(f"*/*/{st.MANIFEST}")):
                shutil.rmtree(tmp)
                continue
            result.producer_dirs.append(st.replace_producer(tmp, producer))
            if not partial:
                result.complete.add(f"{subject_name}/{producer}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    # The store index follows every regeneration (harness.index); a full run of a subject marks
    # its producer complete, so verify holds it to the whole case catalogue.
    index.write(Path(store), result.complete)
    return result


def _capped_files(case: Case, engine: str, cls: str, out_dir: Path) -> dict[str, Path]:
    """The golden's files built in a worker capped to ``cls``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        paths = isolation.run(
            files_in_worker,
            case.subject,
            case.name,
            engine,
            str(out_dir),
            env=isa.cap_environment(cls),
            timeout=CLASS_BUILD_TIMEOUT,
        )
    except isolation.TaskProblem as problem:
        raise RuntimeError(
            f"building {case.subject}/{case.name} on {engine} capped to ISA class {cls} failed: "
            f"{problem}"
        ) from None
    return {name: Path(p) for name, p in paths.items()}


# ------------------------------------------------------------------------------ file contents


def content_drift(a: Path, b: Path, trusted: bool = False) -> list[str]:
    """How the contents of two golden files differ (empty: equal, exactly): harness.contents,
    the determinism gate's own reading."""
    from harness.compat import expected_torch_deprecations
    from harness.policy import compare_leaf, flatten

    with expected_torch_deprecations():  # torch_ao goldens hold quantized tensors
        va = flatten(plain(contents(a, trusted)))
        vb = flatten(plain(contents(b, trusted)))
        if va.keys() != vb.keys():
            return [f"entries differ: {sorted(va.keys() ^ vb.keys())}"]
        out = []
        for name in sorted(va):
            stats = compare_leaf(name, vb[name], va[name])
            if stats.problem or stats.max_steps > 0:
                out.append(stats.summary())
        return out


def differs(a: Path, b: Path, fmt: str, trusted: bool = False) -> bool:
    """Whether two files of format ``fmt`` differ: bytes for a deterministic format (for an
    archive, its entries' bytes: harness.contents.same_entries), contents for the others
    (their bytes change run to run)."""
    if mf.sha256_file(a) == mf.sha256_file(b) or same_entries(a, b):
        return False
    if get_format(fmt).deterministic:
        return True
    return bool(content_drift(a, b, trusted))
