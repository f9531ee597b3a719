"""Runner overhead: verifying the store through the runner vs a bare loop doing the same work.

    python bench/runner_overhead.py [--repeats 2] [--engine fbgemm ...] [--profile]

Three ways to check every golden of the store, each in a fresh interpreter (so caches and
imports start equal), alternated and repeated:

* ``bare``: a plain loop over the manifests that does the loads a BC check needs and nothing
  else: ``torch.load`` (input, expected, state_dicts), ``safetensors.load_file``,
  ``torch.jit.load``, ``torch.export.load`` (+ ``.module()``), ``torch.package``; each loaded
  model runs forward on the stored input. It also builds today's version of each (case, engine)
  once, because the runner must too: that build is the reproduce check and provides the empty
  module a state_dict is loaded into. No hashing, no tolerance policy, no pytest.
* ``runner``: ``harness.verify.collect`` + ``run_check`` on every (golden, format), in one
  process (what ``qbc verify`` runs per test, without pytest).
* ``pytest -n 0``: ``pytest tests/bc`` (the runner as CI runs it: collection, plugin, reports).

Ratios runner/bare and pytest/bare are printed for the work phase (after imports) and for the
whole process. Target: runner at most 1.10x bare. ``--profile`` runs the runner loop under
cProfile and prints where its time goes (see :func:`profile_runner`).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PYTHON,
    STORE,
    Timing,
    alternate,
    emit,
    header,
    make_store,
    ratio_line,
    selection,
)

TARGET = 1.15  # issue 15: runner / bare loop, work phase, wall and CPU, isolation on


# --------------------------------------------------------------------------- child processes


def bare_loop(store: Path) -> dict[str, int]:
    """The baseline: the same loads and forwards as the runner, as a plain loop."""
    import torch
    from safetensors.torch import load_file
    from torch.package import PackageImporter

    from harness.cases import BuildContext
    from harness.formats.package import PACKAGE_NAME, RESOURCE
    from harness.subjects import get_case, get_subject

    counts = {"goldens": 0, "files": 0, "skipped": 0}
    for manifest_path in sorted(store.glob("*/*/*/*/manifest.json")):
        case_dir = manifest_path.parent
        engine, producer_dir = case_dir.parent.name, case_dir.parent.parent
        if producer_dir.name.startswith(".") or engine == "blobs":
            continue
        manifest = json.loads(manifest_path.read_text())
        subject = get_subject(producer_dir.parent.name)
        if subject.unavailable_reason(engine):
            counts["skipped"] += 1
            continue
        files = {fmt: producer_dir / e["path"] for fmt, e in manifest["files"].items()}
        with subject.use_engine(engine):
            case = get_case(subject.name, case_dir.name)
            inputs = tuple(torch.load(files["input"], weights_only=True))
            today = case.builder(BuildContext(case, engine, inputs=inputs))
            for fmt in sorted(files):
                path = files[fmt]
                if fmt in ("input", "expected", "intermediates"):
                    torch.load(path, weights_only=True)
                elif fmt in ("state_dict", "state_dict_legacy", "safetensors"):
                    if fmt == "safetensors":
                        state = load_file(str(path))
                    else:
                        state = torch.load(path, weights_only=fmt not in case.trusted_load)
                    module = today.fresh()
                    module.load_state_dict(state)
                    today.run(module, inputs)
                elif fmt in ("scripted", "traced"):
                    today.run(torch.jit.load(str(path)), inputs)
                elif fmt == "exported":
                    today.run(torch.export.load(str(path)).module(), inputs)
                elif fmt == "package":
                    model = PackageImporter(str(path)).load_pickle(PACKAGE_NAME, RESOURCE)
                    today.run(today.transform(model, inputs), inputs)
                elif fmt == "graph":
                    _ = path.read_text() == today.signature
                else:
                    raise ValueError(f"bare loop does not know format {fmt!r}")
                counts["files"] += 1
        counts["goldens"] += 1
    return counts


def runner_loop(store: Path) -> dict[str, int]:
    """The runner without pytest: every (golden, format) check through ``run_check``."""
    from harness.outcomes import GoldenFailure, GoldenSkip
    from harness.policy import Policy
    from harness.verify import collect, plan_checks, run_check

    policy = Policy.load(None)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    items = collect(store)
    plan_checks(items)  # as the pytest plugin does: a golden's TorchScript loads share a child
    for item in items:
        try:
            run_check(item, policy)
            counts["passed"] += 1
        except GoldenSkip:
            counts["skipped"] += 1
        except GoldenFailure:  # known breaks included: pytest turns them into xfails
            counts["failed"] += 1
    return counts


def child(mode: str, store: Path, threads: int) -> None:
    t0 = time.perf_counter()
    import resource

    import torch

    if threads > 0:  # the same setting as the pytest runner's --qbc-torch-threads
        torch.set_num_threads(threads)

    import harness
    import harness.cases.torch_ao
    import harness.verify  # noqa: F401

    t1, c1 = time.perf_counter(), time.process_time()
    counts = (bare_loop if mode == "bare" else runner_loop)(store)
    t2, c2 = time.perf_counter(), time.process_time()
    from harness import isolation

    isolation.shutdown()  # reap the worker zygotes, so their loads' CPU is counted below
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    # work_cpu: this process's CPU seconds (all its threads); children_cpu: its worker
    # zygotes and their forked children (the runner's isolated loads)
    emit(
        {
            "import": t1 - t0,
            "work": t2 - t1,
            "work_cpu": c2 - c1,
            "children_cpu": kids.ru_utime + kids.ru_stime,
            "threads": torch.get_num_threads(),
            **counts,
        }
    )


# --------------------------------------------------------------------------- profiling

#: (label, file suffix, function name): cumulative time of these functions in a cProfile run.
#: Categories overlap (a build calls forwards); each line is "time spent inside this call".
PROFILE_POINTS = (
    ("collect (read manifests)", "harness/verify.py", "collect"),
    ("integrity: sha256 of every file", "harness/manifest.py", "sha256_file"),
    ("build today's case (reproduce)", "harness/verify.py", "_today"),
    ("torch.load", "torch/serialization.py", "load"),
    ("torch.jit.load", "torch/jit/_serialization.py", "load"),
    ("torch.export.load", "torch/export/__init__.py", "load"),
    ("ExportedProgram.module()", "torch/export/exported_program.py", "module"),
    ("torch.package load_pickle", "torch/package/package_importer.py", "load_pickle"),
    ("safetensors load_file", "safetensors/torch.py", "load_file"),
    ("nn.Module forwards (all)", "torch/nn/modules/module.py", "_wrapped_call_impl"),
    ("torch.jit.script/trace (in builds)", "torch/jit/_script.py", "script"),
    ("isolated loads (worker task)", "harness/isolation.py", "run_task"),
    ("tolerance policy judge", "harness/policy.py", "judge"),
    ("engine switch (use_engine)", "contextlib.py", "__enter__"),
)


def profile_runner(store: Path, top: int = 8) -> dict[str, float]:
    """Run the runner loop under cProfile; print and return seconds per :data:`PROFILE_POINTS`.

    Imports happen before profiling starts (they are measured separately as the child's
    import phase).
    """
    import harness.cases.torch_ao
    import harness.verify

    harness.verify.forget_builds()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    counts = runner_loop(store)
    prof.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    out: dict[str, float] = {"total": total}
    print(f"  cProfile of the runner loop: {total:.2f}s for {counts}")
    for label, suffix, name in PROFILE_POINTS:
        ct = sum(v[3] for k, v in raw.items() if k[0].endswith(suffix) and k[2] == name)
        out[label] = ct
        print(f"    {label:<38}{ct:>7.2f}s {ct / total:>5.0%}")
    print(f"  top {top} functions by own time:")
    for (file, line, name), v in sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]:
        short = "/".join(Path(file).parts[-2:]) if file != "~" else ""
        print(f"    {v[2]:>6.2f}s own {v[3]:>6.2f}s cum  {short}:{line}({name})")
    return out


# --------------------------------------------------------------------------- benchmark


def bench(
    repeats: int = 2,
    engines: list[str] | None = None,
    profile: bool = False,
    threads: int = 1,
    all_producers: bool = False,
) -> dict[str, Any]:
    header("runner overhead: runner vs bare loop (same loads + forwards)")
    with tempfile.TemporaryDirectory(prefix="qbc-bench-store-") as tmp:
        store = Path(tmp) / "golden"
        sel = selection(engines, all_producers)
        n = make_store(store, **sel)
        print(f"store: copy of the committed goldens {sel} ({n} goldens); torch threads {threads}")
        me = str(Path(__file__).resolve())
        bare = Timing("bare loop                 ")
        runner = Timing("runner loop               ")
        no_iso = Timing("runner loop, QBC_ISOLATION=0")
        pyt = Timing("pytest -n 0               ")
        pytest_cmd = [
            PYTHON,
            "-m",
            "pytest",
            "tests/bc",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",
            f"--qbc-store={store}",
            f"--qbc-torch-threads={threads}",
        ]

        def child_cmd(mode: str) -> list[str]:
            return [
                PYTHON,
                me,
                "--child",
                mode,
                "--store",
                str(store),
                "--torch-threads",
                str(threads),
            ]

        alternate(
            [
                (child_cmd("bare"), bare),
                (child_cmd("runner"), runner),
                (child_cmd("runner"), no_iso, {"QBC_ISOLATION": "0"}),
            ],
            repeats,
        )
        # once: the slowest side, and bench/parallel.py measures pytest -n 0 again
        alternate([(pytest_cmd, pyt)], 1)
        for t in (bare, runner, no_iso, pyt):
            print("  " + t.describe())
        for t in (bare, runner, no_iso):
            last = t.payloads[-1]
            print(
                f"  {t.label.strip()}: import {t.payload_med('import'):.2f}s, work "
                f"{t.payload_med('work'):.2f}s wall / {t.payload_med('work_cpu'):.2f}s cpu "
                f"(+{t.payload_med('children_cpu'):.2f}s cpu in forked loads); "
                + ", ".join(f"{k} {v}" for k, v in last.items() if isinstance(v, int))
            )

        def work_cpu(t: Timing) -> float:
            return t.payload_med("work_cpu") + t.payload_med("children_cpu")

        work = runner.payload_med("work") / bare.payload_med("work")
        work_c = work_cpu(runner) / work_cpu(bare)
        iso = no_iso.payload_med("work") / bare.payload_med("work")
        iso_c = work_cpu(no_iso) / work_cpu(bare)
        whole = runner.wall_med / bare.wall_med
        pyt_ratio = pyt.wall_med / bare.wall_med
        pyt_cpu = pyt.cpu_med / bare.cpu_med
        for line in (
            ratio_line("runner/bare, work phase (wall)", work, f"<= {TARGET}", work <= TARGET),
            ratio_line(
                "runner/bare, work phase (cpu incl. forks)",
                work_c,
                f"<= {TARGET}",
                work_c <= TARGET,
            ),
            ratio_line(
                "runner without isolation/bare, work (wall)", iso, f"<= {TARGET}", iso <= TARGET
            ),
            ratio_line(
                "runner without isolation/bare, work (cpu)", iso_c, f"<= {TARGET}", iso_c <= TARGET
            ),
            ratio_line("runner/bare, whole process (wall)", whole),
            ratio_line("pytest -n 0/bare, whole process (wall)", pyt_ratio),
            ratio_line("pytest -n 0/bare, whole process (cpu)", pyt_cpu),
        ):
            print("  " + line)
        result = {
            "runner_over_bare_work": work,
            "runner_over_bare_work_cpu": work_c,
            "no_isolation_over_bare_work": iso,
            "no_isolation_over_bare_work_cpu": iso_c,
            "runner_over_bare_wall": whole,
            "pytest_over_bare_wall": pyt_ratio,
            "pytest_over_bare_cpu": pyt_cpu,
            "bare_wall": bare.wall_med,
            "pytest_n0_wall": pyt.wall_med,
            "spread": max(bare.spread(), runner.spread(), no_iso.spread()),
        }
        if profile:
            import torch

            if threads > 0:
                torch.set_num_threads(threads)
            result["profile"] = profile_runner(store)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--engine", action="append", help="only goldens of this engine (repeatable)")
    p.add_argument("--profile", action="store_true", help="cProfile the runner loop")
    p.add_argument(
        "--torch-threads", type=int, default=1, help="torch threads in bare and runner (0: default)"
    )
    p.add_argument("--all-producers", action="store_true", help="every producer, not only today's")
    p.add_argument("--child", choices=("bare", "runner"), help=argparse.SUPPRESS)
    p.add_argument("--store", default=str(STORE), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, Path(args.store), args.torch_threads)
        return 0
    bench(args.repeats, args.engine, args.profile, args.torch_threads, args.all_producers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
