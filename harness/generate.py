"""The generator: build every selected case per engine with today's code and write its golden.

Only the current producer of each subject (``harness.manifest.producer_id(subject=...)``) is
ever written. The whole
producer folder is built in a temporary sibling and renamed into place (see harness.store).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import atomic, index
from harness import manifest as mf
from harness import store as st
from harness.cases import BuildContext, Case, select_cases
from harness.formats import get_format
from harness.lock import locked_regeneration
from harness.subjects import check_engine, get_subject, subject_names


@dataclass
class GenerateResult:
    written: list[str] = field(default_factory=list)  # golden ids
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (golden id, reason)
    producer_dirs: list[Path] = field(default_factory=list)
    #: ``subject/producer`` written by a full (unfiltered) run
    complete: set[str] = field(default_factory=set)


def write_golden(case: Case, engine: str, producer_tmp: Path, command: str) -> None:
    """Build (case, engine) with today's code and write all its formats + manifest."""
    subject = get_subject(case.subject)
    rel = f"{engine}/{case.name}"
    golden_dir = producer_tmp / rel
    if golden_dir.exists():
        shutil.rmtree(golden_dir)
    golden_dir.mkdir(parents=True)
    manifest = mf.new_manifest(case.subject, case.spec(), engine, case.seed, command)
    with tempfile.TemporaryDirectory(prefix="qbc-gen-") as scratch, subject.use_engine(engine):
        built = case.builder(BuildContext(case, engine))
        for name in case.formats_for(engine):
            fmt = get_format(name)
            path = Path(scratch) / fmt.filename
            fmt.write(built, path)
            entry = st.add_file(producer_tmp, rel, path)
            entry["deterministic"] = fmt.deterministic
            entry["runs_code_on_load"] = fmt.runs_code_on_load or name in case.trusted_load
            manifest["files"][name] = entry
    mf.write_manifest(golden_dir / st.MANIFEST, manifest)
    atomic.write_step(f"manifest {rel}")


@locked_regeneration  # one writer at a time; a second one gets a clear RegenLocked error
def generate(
    store: Path,
    subjects: Sequence[str] | None = None,
    case_glob: str | None = None,
    engines: Sequence[str] | None = None,
    command: str | None = None,
    progress: bool = False,
) -> GenerateResult:
    """Write the current producer's goldens for the selection into ``store``.

    A full run (no case or engine filter) rebuilds the producer from scratch, so goldens of
    cases that left the table disappear; a filtered run keeps the other goldens as they were.
    """
    from tqdm import tqdm

    command = command or mf.default_command()
    result = GenerateResult()
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
            for case, engine in tqdm(
                jobs,
                desc=f"generate {subject_name}",
                disable=None if progress else True,
                unit="golden",
            ):
                gid = f"{subject_name}/{producer}/{engine}/{case.name}"
                reason = subject.unavailable_reason(engine)
                if reason:
                    result.skipped.append((gid, reason))
                    continue
                write_golden(case, engine, tmp, command)
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
