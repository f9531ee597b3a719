"""Shared helpers of the benchmarks: timed subprocesses, synthetic stores, printing.

Every benchmark measures its baseline in the same run and prints a ratio, because the machine
is shared: absolute seconds drift with the load of other processes, a ratio of two measurements
taken back to back (alternating, repeated) drifts much less. Each timing is reported as wall
seconds *and* CPU seconds (user+sys of the process and its children): CPU time is what the work
costs, wall time is what a developer waits; under contention they differ and the gap is itself
a noise figure.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STORE = REPO / "golden"
PYTHON = sys.executable
BENCH_PYTHON = Path("/work/venv-bench/bin/python")


@dataclass
class Timing:
    """Repeated measurements of one thing: wall and CPU seconds per repeat (+ child payloads)."""

    label: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    payloads: list[dict[str, Any]] = field(default_factory=list)

    @property
    def wall_med(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_med(self) -> float:
        return statistics.median(self.cpu)

    def spread(self, which: str = "wall") -> float:
        """(max - min) / median of the repeats: the run-to-run noise of this measurement."""
        xs = getattr(self, which)
        if len(xs) < 2:
            return float("nan")
        return (max(xs) - min(xs)) / statistics.median(xs)

    def payload_med(self, key: str) -> float:
        return statistics.median(p[key] for p in self.payloads)

    def describe(self) -> str:
        walls = ", ".join(f"{w:.2f}" for w in self.wall)
        return (
            f"{self.label}: wall {self.wall_med:.2f}s (repeats {walls}; spread "
            f"{self.spread():.0%}), cpu {self.cpu_med:.2f}s"
        )


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


CPUACCT = Path("/sys/fs/cgroup/cpuacct")


class CpuGroup:
    """CPU seconds of a command and every process it starts, from a cpuacct cgroup of its own
    (cgroup v1, when this user may create one). ``resource.RUSAGE_CHILDREN`` counts only what
    was reaped: xdist workers exit without reaping their worker-pool zygotes (harness.isolation),
    whose forked children do the isolated loads, so it misses ~40 % of a ``pytest -n 2`` run."""

    def __init__(self) -> None:
        self.path: Path | None = None
        if os.access(CPUACCT, os.W_OK):
            path = CPUACCT / f"qbc-bench-{os.getpid()}-{time.monotonic_ns()}"
            try:
                path.mkdir()
                self.path = path
            except OSError:
                self.path = None

    def enter(self) -> None:
        """In the child, before exec: join the group."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def seconds(self) -> float | None:
        if self.path is None:
            return None
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def close(self) -> None:
        if self.path is None:
            return
        for _ in range(50):  # zygotes die with their parent, a moment later
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def run_timed(
    cmd: Sequence[str], timing: Timing, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` once, append its wall and CPU seconds to ``timing``.

    A child that prints a last stdout line ``BENCH {json}`` reports inner phase timings; that
    dict is appended to ``timing.payloads``.
    """
    full_env = {**os.environ, **(env or {})}
    group = CpuGroup()
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=REPO, env=full_env, capture_output=True, text=True, preexec_fn=group.enter
    )
    timing.wall.append(time.perf_counter() - t0)
    time.sleep(0.3)  # zygotes left by xdist workers end with them (PR_SET_PDEATHSIG)
    in_group = group.seconds()
    timing.cpu.append(in_group if in_group is not None else _children_cpu() - cpu0)
    group.close()
    if check and proc.returncode == 1 and "pytest" in cmd:
        # Tests failed: the timing still stands, but say so (the store or code is in flux).
        summary = proc.stdout.strip().splitlines()[-1:] or ["?"]
        failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED")]
        print(f"  WARNING: {timing.label.strip()}: tests failed ({summary[0]}): {failed[:3]}")
    elif check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH "):
            timing.payloads.append(json.loads(line[len("BENCH ") :]))
            break
    return proc


def emit(payload: dict[str, Any]) -> None:
    """Child side of :func:`run_timed`: report inner timings as the last stdout line."""
    sys.stdout.flush()
    print("BENCH " + json.dumps(payload), flush=True)


def alternate(runs: Iterable[tuple[Any, ...]], repeats: int) -> None:
    """Run each ``(cmd, timing[, env])`` ``repeats`` times, interleaved (A B A B ...), so a load
    change on the machine hits both sides of a ratio alike."""
    runs = list(runs)
    for _ in range(repeats):
        for cmd, timing, *env in runs:
            run_timed(cmd, timing, env=env[0] if env else None)


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} cores"


def _rename_producer(golden_dir: Path, producer: str) -> None:
    """A copied golden's manifest names the producer folder it now lies in (the runner refuses
    a manifest whose producer differs from its folder's)."""
    path = golden_dir / "manifest.json"
    data = json.loads(path.read_text())
    data["producer"]["id"] = producer
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def make_store(
    dest: Path,
    copies: int = 1,
    engines: Sequence[str] | None = None,
    source: Path = STORE,
    cases: Sequence[str] | None = None,
    producers: Sequence[str] | None = None,
) -> int:
    """A synthetic store in ``dest``: ``copies`` renamed copies of every producer of ``source``.

    Copy k>0 of producer ``torch-X_qbc-Y`` is named ``torch-X_qbc-Y+copyK`` (same torch release,
    so the same policy and known breaks apply; its files are real goldens, byte-identical, and
    the runner checks them like any other producer). ``engines`` keeps only those engine
    folders, ``cases`` only those case folders, ``producers`` only those producers. Returns the number of goldens written.
    """
    n = 0
    for producer_dir in sorted(source.glob("*/*")):
        if not producer_dir.is_dir() or producer_dir.name.startswith("."):
            continue
        subject = producer_dir.parent.name
        if producers is not None and producer_dir.name not in producers:
            continue
        for k in range(copies):
            name = producer_dir.name + (f"+copy{k}" if k else "")
            target = dest / subject / name
            target.mkdir(parents=True)
            for child in producer_dir.iterdir():
                if child.name == "blobs":
                    shutil.copytree(child, target / "blobs")
                elif child.is_dir() and (engines is None or child.name in engines):
                    for case_dir in child.iterdir():
                        if cases is None or case_dir.name in cases:
                            shutil.copytree(case_dir, target / child.name / case_dir.name)
                            if k:
                                _rename_producer(target / child.name / case_dir.name, name)
                            n += 1
    from harness import index

    index.write(dest)  # the copy is accounted for (as tests' copies are): no index failure
    return n


def current_producer() -> str:
    """The producer id of this environment (torch release + qbc version)."""
    from harness.manifest import producer_id

    return producer_id()


def selection(engines: Sequence[str] | None, all_producers: bool) -> dict[str, Any]:
    """make_store keyword arguments for the goldens a store-wide benchmark uses."""
    return {"engines": engines, "producers": None if all_producers else [current_producer()]}


def header(title: str) -> None:
    print(f"\n== {title} ==  ({load_average()})", flush=True)


def ratio_line(name: str, value: float, target: str | None = None, met: bool | None = None) -> str:
    verdict = "" if met is None else ("  MET" if met else "  MISSED")
    tgt = f" (target {target})" if target else ""
    return f"{name}: {value:.2f}x{tgt}{verdict}"
