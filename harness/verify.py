"""The runner's checks: one per (golden, format), shared by the pytest plugin and ``qbc verify``.

For a golden ``<subject>/<producer>/<engine>/<case>`` and one of its formats:

- ``input`` (data): the stored input loads (weights_only) and equals today's seeded input;
- load formats (state_dict, state_dict_legacy, safetensors, scripted, traced, exported,
  package): the past artifact loads today and, run on the stored input, reproduces the stored
  expected output within policy (package also re-derives the get_attr targets);
- ``expected`` (reproduce): today's code rebuilds the case from its seed on the stored input and
  reproduces the stored output within policy;
- ``graph``: today's graph signature equals the stored one.

Every file's sha256 and size are checked against the manifest before it is loaded.

ISA classes (harness.isa): the native kernels compute differently per CPU class, so numbers are
compared like with like (:func:`isa_plan`):

- ``exact``: the golden holds numbers for this machine's class (or the numbers computed here
  match the golden's class within the same-class policy): judged by the same-class policy;
- ``capped``: the golden's class is lower and this machine reaches it: the check runs again in
  a worker capped to that class (harness.isolation) and is judged by the same-class policy;
- ``approx``: neither: today's numbers here are judged against the golden's with the ISA rules
  of the policy (``isa_mode = "approx"``), and a load check must also reproduce exactly what
  today's code computes here (so a changed weight still fails). The verdict is then ``approx``,
  counted apart from ``ok``, with both classes named.

Every failure message names the classes ("golden: avx2, this machine: avx512_vnni").

Numeric debugger: when a numeric check fails and the golden carries an ``intermediates`` file
(per-debug-handle outputs), :func:`first_divergence` compares them with those of what failed
(the reloaded ``exported`` program, or today's build) and the failure names the first op whose
SQNR falls below 40 dB, e.g. "first divergent op: aten.conv1d, handle 3, SQNR 2.4 dB"
(:data:`DIVERGENCE_HOOK` replaces that rule).

This module also holds the test function itself (``test_golden``), so ``qbc verify`` can run it
with pytest from an installed package; ``tests/bc/test_goldens.py`` re-exports it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness import compat, downstream, index, isa, isolation, recorded_warnings, scope
from harness import manifest as mf
from harness.cases import BuildContext, Built
from harness.formats import LoadContext, get_format
from harness.graphsig import section
from harness.outcomes import GoldenFailure, GoldenSkip, IntegrityError, golden_failure
from harness.policy import Failure, KnownBreak, Policy, Verdict, Where, judge
from harness.results import CHECK_ID_PROPERTY, CONSUMER_PROPERTY, DRIFT_PROPERTY
from harness.store import Golden, golden_at, iter_goldens
from harness.subjects import check_engine, get_case, get_subject, subject_names

# Workers (harness.isolation) start with the runner and the case tables imported.
isolation.warm("harness.verify")
isolation.warm("harness.subjects:all_cases")
# ... and a downstream consumer's workers with that consumer warmed up (harness.downstream)
isolation.warm("harness.downstream:warm_up_named_consumer")

#: name of the single check a golden with an unusable manifest gets
MANIFEST_CHECK = "manifest"


@dataclass(frozen=True)
class CheckItem:
    golden: Golden
    fmt: str
    #: a downstream consumer (harness.downstream) that lowers and runs the ``exported`` golden;
    #: None: today's torch and qbc read it
    consumer: str | None = None

    @property
    def id(self) -> str:
        return f"{self.golden.id}/{self.fmt}" + (f"@{self.consumer}" if self.consumer else "")


#: largest graph.txt read (signatures of the catalogue are 1-20 KB)
MAX_SIGNATURE_BYTES = 1 << 20
#: longest diff a failure message carries (the rest is summarized in one line)
MAX_DIFF_CHARS = 20_000


def _capped(text: str, limit: int = MAX_DIFF_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    rest = text[limit:]
    return (
        f"{text[:limit]}\n... {rest.count(chr(10))} more lines ({len(rest)} characters) not shown"
    )


def collect(
    store: Path,
    consumers: tuple[str, ...] = (),
    producers: str = scope.DEFAULT,
    downstream_producers: str = scope.DEFAULT,
) -> list[CheckItem]:
    """Every (golden, format) check of the producers in scope ``producers`` (harness.scope), in
    id order; with ``consumers``, also one check per downstream consumer of every exported golden
    of the producers in scope ``downstream_producers`` (``.../exported@onnxruntime``)."""
    goldens = iter_goldens(store)
    pairs = [(g.subject, g.producer) for g in goldens]
    checked = scope.in_scope(pairs, producers)
    lowered = scope.in_scope(pairs, downstream_producers) & checked if consumers else frozenset()
    # A golden whose manifest is unusable still gets one (failing) check: see precheck().
    items = []
    for g in goldens:
        if (g.subject, g.producer) not in checked:
            continue
        for f in sorted(g.formats) or [MANIFEST_CHECK]:
            items.append(CheckItem(g, f))
            if f == "exported" and (g.subject, g.producer) in lowered:
                items += [CheckItem(g, f, c) for c in consumers]
    # then one failing check per thing the store index does not account for (harness.index: a
    # golden added, removed or changed without it, or missing from today's catalogue), whatever
    # the scope: they read no golden, and a stale index fails CI's whole-store run anyway
    for gid, fmt, message in index.problems(store, catalogue_expectations()):
        ids = dict(zip(("subject", "producer", "engine", "case"), gid.split("/"), strict=True))
        ghost = Golden(store=Path(store), **ids, manifest=None, problem=message)
        items.append(CheckItem(ghost, fmt))
    return items


def catalogue_expectations() -> dict[str, dict[str, list[str]]]:
    """Today's producer of every subject -> the goldens its case catalogue writes,
    ``{"<engine>/<case>": [formats]}`` (what a full regeneration must have stored)."""
    out: dict[str, dict[str, list[str]]] = {}
    for name in subject_names():
        subject = get_subject(name)
        out[f"{name}/{mf.producer_id(subject=name)}"] = {
            f"{engine}/{case.name}": list(case.formats_for(engine))
            for case in subject.cases()
            for engine in (case.engines or subject.engines())
        }
    return out


def known_break(item: CheckItem, breaks: list[KnownBreak]) -> KnownBreak | None:
    """The first entry covering this check run by this consumer (torch release, qbc version)."""
    import harness

    g = item.golden
    producer_torch, producer_qbc = mf.parse_producer(g.producer)
    for entry in breaks:
        if entry.matches(
            g.subject,
            g.case,
            g.engine,
            item.fmt,
            producer_torch,
            compat.torch_version(),
            _release(producer_qbc),
            _release(harness.__version__),
            item.consumer or "torch",
        ):
            return entry
    return None


def _release(version: str) -> tuple[int, ...]:
    """``0.1.0`` -> (0, 1, 0); a plug-in subject's suffix (``0.1.0_mysubject-2``) is dropped."""
    head = version.split("_", 1)[0]
    return tuple(int(p) for p in head.split(".") if p.isdigit())


def _today(subject: str, case: str, engine: str, input_key: str, input_path: str) -> Built:
    """Today's build of (case, engine) on the stored inputs, cached per process; the warnings
    the build raised are replayed into every check that uses it, cached or not.

    The cache is keyed by the inputs' content, not their file: producers write the same seeded
    inputs in different bytes (torch 2.6's zip layout differs from 2.13's), and every producer's
    golden of a case shares one build in a process that sees them all."""
    inputs, content_key, load_warnings = _stored_inputs(input_key, input_path)
    key = (subject, case, engine, content_key)
    if key not in _BUILDS:
        with recorded_warnings.recording() as caught:
            built = get_case(subject, case).builder(
                BuildContext(get_case(subject, case), engine, inputs=inputs)
            )
        _BUILDS[key] = (built, tuple(caught))
    built, caught = _BUILDS[key]
    recorded_warnings.replay(load_warnings)
    recorded_warnings.replay(caught)
    return built


#: today's builds by (subject, case, engine, input content): a few hundred tiny models at most
_BUILDS: dict[tuple[str, str, str, str], tuple[Built, tuple[recorded_warnings.Recorded, ...]]] = {}


def forget_builds() -> None:
    """Drop the cached builds and inputs of :func:`_today` (a benchmark's cold runner)."""
    _BUILDS.clear()
    _stored_inputs.cache_clear()


@functools.lru_cache(maxsize=4096)
def _stored_inputs(
    input_key: str, input_path: str
) -> tuple[tuple[Any, ...], str, tuple[recorded_warnings.Recorded, ...]]:
    """The stored inputs of the file with sha256 ``input_key``, a key for their content (the
    sha256 of the bytes today's torch writes for them: equal for equal values), and the
    warnings loading them raised (replayed into every check that uses them)."""
    import io

    import torch

    with recorded_warnings.recording() as caught:
        inputs = tuple(torch.load(input_path, weights_only=True))
        buf = io.BytesIO()
        torch.save(inputs, buf)
    return inputs, hashlib.sha256(buf.getvalue()).hexdigest(), tuple(caught)


@dataclass(frozen=True)
class IsaPlan:
    """How one golden's numbers are compared on this machine (module docstring)."""

    #: the ISA class of the golden's numbers the check compares with
    golden: str
    #: this machine's class (this process's, after any run-wide cap)
    machine: str
    #: ``exact``, ``capped`` or ``approx``: what is possible when the first, native comparison
    #: does not match
    mode: str
    #: the cap environment of the worker, for ``capped``
    env: dict[str, str] = field(default_factory=dict)
    #: why exactness is out of reach, for ``approx``
    reason: str = ""


def isa_plan(manifest: mf.Manifest, machine: isa.Isa | None = None) -> IsaPlan:
    """Which class of a golden's numbers this machine compares with, and how (module doc)."""
    me = machine or isa.detect()
    classes = manifest.classes
    if me.cls in classes:
        return IsaPlan(me.cls, me.cls, "exact")
    below = [c for c in classes if isa.rank(c) < isa.rank(me.cls) and isa.can_cap(me.cpu, c)]
    if below:
        golden = below[-1]
        return IsaPlan(golden, me.cls, "capped", isa.cap_environment(golden, me.cpu))
    # nearest class the golden holds (the lower one on a tie)
    golden = min(classes, key=lambda c: (abs(isa.rank(c) - isa.rank(me.cls)), isa.rank(c)))
    why = (
        f"this machine ({me.describe()}) cannot compute in {golden}"
        if isa.rank(golden) > isa.rank(me.cls)
        else f"no cap reaches {golden} from this machine ({me.describe()})"
    )
    return IsaPlan(golden, me.cls, "approx", reason=why)


@dataclass(frozen=True)
class IsaRecord:
    """The ISA side of one check's result: the golden's class, this machine's, and the mode."""

    golden: str
    machine: str
    mode: str
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        out = {"golden": self.golden, "machine": self.machine, "mode": self.mode}
        if self.reason:
            out["reason"] = self.reason
        return out

    def describe(self) -> str:
        """``golden: avx2, this machine: avx512_vnni (compared in a worker capped to avx2)``."""
        how = {
            "exact": "",
            "capped": f" (compared in a worker capped to {self.golden})",
            "approx": " (approx: compared across ISA classes by the policy's ISA rules"
            + (f"; {self.reason}" if self.reason else "")
            + ")",
        }.get(self.mode, f" ({self.mode})")
        return f"golden: {self.golden}, this machine: {self.machine}{how}"


@dataclass(frozen=True)
class CheckResult:
    """A check that did not fail: ``ok`` or ``approx`` (a failure raises GoldenFailure)."""

    verdict: str
    isa: IsaRecord
    judged: Verdict | None = None

    @property
    def ok(self) -> bool:
        return self.verdict in ("ok", "approx")


def _isa_record(golden: Golden, mode: str = "-") -> IsaRecord:
    machine = isa.machine_class()
    cls = golden.manifest.isa_class if golden.manifest else "unknown"
    if golden.manifest and machine in golden.manifest.classes:
        cls = machine
    return IsaRecord(cls, machine, mode)


def _where(
    golden: Golden,
    check: str,
    golden_isa: str,
    machine_isa: str,
    mode: str = "exact",
    consumer: str = "torch",
) -> Where:
    return Where(
        consumer=consumer,
        subject=golden.subject,
        engine=golden.engine,
        case=golden.case,
        producer=golden.producer,
        check=check,
        golden_isa=golden_isa,
        machine_isa=machine_isa,
        isa_mode=mode,
    )


def _fail(
    item: CheckItem,
    what: str,
    detail: str,
    check: str = "",
    error: str | None = None,
    isa_rec: IsaRecord | None = None,
) -> GoldenFailure:
    rec = isa_rec or _isa_record(item.golden)
    failure = golden_failure(
        item.golden.id,
        item.fmt,
        what,
        f"{rec.describe()}\n{detail}",
        check=check or item.fmt,
        error=error,
    )
    failure.isa = rec  # type: ignore[attr-defined]  # read by test_golden for the results row
    return failure


def _load_failure(
    item: CheckItem,
    problem: isolation.TaskProblem,
    where: str = "",
    isa_rec: IsaRecord | None = None,
) -> GoldenFailure:
    """A failed load as that golden's failure; ``error`` is what the loader raised
    (``KeyError``), or ``NativeCrash`` / ``TaskTimeout``."""
    kind, detail = isolation.describe(problem)
    error = problem.type_name if isinstance(problem, isolation.TaskError) else None
    return _fail(
        item,
        kind.value,
        detail + where,
        check="load",
        error=error or type(problem).__name__,
        isa_rec=isa_rec,
    )


def precheck(item: CheckItem) -> None:
    """Fail (GoldenFailure) a check whose golden cannot even be interpreted by this qbc:
    unusable manifest, or a subject, engine, case or format this qbc does not know."""
    __tracebackhide__ = True
    g = item.golden
    if g.problem is not None:
        what = (
            "unusable golden manifest"
            if item.fmt == MANIFEST_CHECK
            else "the store does not match its index or the case catalogue"
        )
        raise _fail(item, what, g.problem, check=MANIFEST_CHECK)
    try:
        subject = get_subject(g.subject)
        check_engine(subject, g.engine)
        case = get_case(g.subject, g.case)
        get_format(item.fmt)
    except KeyError as exc:
        raise _fail(
            item, "golden names something this qbc does not know", str(exc.args[0])
        ) from None
    if item.fmt not in case.formats_for(g.engine):
        # e.g. a package entry added to a golden whose case writes no package: never loaded
        raise _fail(
            item,
            "format not declared by the golden's case",
            f"case {g.case} writes {', '.join(case.formats_for(g.engine))} on engine "
            f"{g.engine}; the manifest also lists {item.fmt}",
            check=MANIFEST_CHECK,
        )


F = TypeVar("F", bound=Callable[..., Any])


def guarded(check: F) -> F:
    """Decorate the runner's per-check function so every problem is that golden's failure.

    Runs :func:`precheck` first; then an IntegrityError, a failed isolated load, or any
    exception other than GoldenFailure / GoldenSkip (a corrupt file that torch, safetensors or
    the policy tripped over) becomes a GoldenFailure naming the golden and format, with the
    original exception chained so its traceback stays visible. So a check either passes, skips,
    or raises GoldenFailure.
    """

    @functools.wraps(check)
    def run(item: CheckItem, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        precheck(item)
        try:
            return check(item, *args, **kwargs)
        except (GoldenFailure, GoldenSkip):
            raise
        except IntegrityError as exc:
            raise _fail(
                item,
                "golden file failed its integrity check",
                str(exc),
                check="integrity",
                error="IntegrityError",
            ) from None
        except isolation.TaskProblem as problem:
            raise _load_failure(item, problem) from None
        except Exception as exc:
            kind, detail = isolation.describe(isolation.TaskError(type(exc).__name__, str(exc)))
            what = (
                "check failed on the golden's data"
                if kind is isolation.ProblemKind.LOAD_ERROR
                else kind.value
            )
            raise _fail(item, what, detail, error=type(exc).__name__) from exc

    return run  # type: ignore[return-value]


#: Called on a numeric failure as hook(stored: dict, today: dict) -> str | None (the first
#: divergent op's description). None: the numeric debugger's ``describe_first_divergence``
#: (first debug handle, in topological order, whose SQNR against the golden is below 40 dB).
DIVERGENCE_HOOK: Callable[[dict[str, Any], dict[str, Any]], str | None] | None = None


def _exported_intermediates(path: str, inputs: tuple[Any, ...]) -> dict[str, Any]:
    from harness.formats import pt2
    from harness.quant.pt2e.numeric_debugger import program_intermediates

    return program_intermediates(pt2.load(Path(path)), inputs)


def first_divergence(item: CheckItem, today: Built, isa_class: str | None = None) -> str | None:
    """Name the first divergent op of a failing export-based golden, when it has intermediates.

    The stored per-handle outputs are compared with those of what failed: the reloaded exported
    program for the ``exported`` load check (in a child process, like the load itself), today's
    build otherwise. Only a diagnosis: if it cannot be made, it says why instead of raising.
    """
    if "intermediates" not in item.golden.formats:
        return None
    import torch

    from harness.quant.pt2e import numeric_debugger as nd

    try:
        stored = torch.load(item.golden.path("intermediates", isa_class), weights_only=True)
        if item.fmt == "exported":
            path = str(item.golden.path("exported", isa_class))
            mine = isolation.run(_exported_intermediates, path, today.inputs)
        elif today.intermediates is not None:
            mine = today.intermediates
        elif today.exported is not None:
            mine = nd.program_intermediates(today.exported, today.inputs)
        else:
            return None
        return (DIVERGENCE_HOOK or nd.describe_first_divergence)(stored, mine)
    except Exception as exc:  # a diagnosis must never hide the failure it explains
        return f"first divergent op: not determined ({type(exc).__name__}: {exc})"


def _input_file(golden: Golden, isa_class: str) -> tuple[str, str]:
    """The golden's input file as :func:`_stored_inputs` and :func:`_today` key it: (sha256 of
    its bytes, its path)."""
    input_path = golden.path("input", isa_class)
    return hashlib.sha256(input_path.read_bytes()).hexdigest(), str(input_path)


def _today_for(golden: Golden, isa_class: str) -> Built:
    return _today(golden.subject, golden.case, golden.engine, *_input_file(golden, isa_class))


def _inputs_for(golden: Golden, isa_class: str, replay: bool = True) -> tuple[Any, ...]:
    """The golden's stored inputs (the very tuple :func:`_today_for` builds on); with
    ``replay``, the warnings loading them raised are replayed into the check's recording."""
    inputs, _, load_warnings = _stored_inputs(*_input_file(golden, isa_class))
    if replay:
        recorded_warnings.replay(load_warnings)
    return inputs


def _numbers(
    golden: Golden,
    fmt_name: str,
    isa_class: str,
    today: Built,
    read: Callable[..., Any] | None = None,
) -> Any:
    """What check ``fmt_name`` compares with the golden's expected output: today's rebuilt
    output (reproduce), or the past artifact of class ``isa_class`` loaded and run today."""
    fmt = get_format(fmt_name)
    if fmt.role == "reproduce":
        return today.expected
    case = get_case(golden.subject, golden.case)
    ctx = LoadContext(
        today.inputs, today, golden.engine, weights_only=fmt_name not in case.trusted_load
    )
    path = golden.path(fmt_name, isa_class)
    # Today's build (and with it the int_mm engine's probe of this process) happened outside:
    # only the past artifact runs as on a real CPU of this class (compat.lower_cpu_emulation).
    with compat.lower_cpu_emulation(golden.engine):
        return (read or fmt.read)(path, ctx)


def numbers_in_worker(
    store: str,
    golden_id: str,
    fmt_name: str,
    isa_class: str,
    reader: str | None,
    run: str | None = None,
) -> Any:
    """Worker task (harness.isolation; plain data in and out): :func:`_numbers` computed in the
    worker's process, whose ISA class may be capped. ``reader``: the format's reader by name
    (``module:function``), so a reader replaced at run time is the one used. ``run``: how
    today's build runs a model (:func:`_run_name`); given, today's case is built in the worker
    only if the reader needs more of it than the stored inputs and that function."""
    golden = golden_at(Path(store), *golden_id.split("/"))
    if golden.manifest is None:
        raise ValueError(f"golden {golden_id}: {golden.problem}")
    subject = get_subject(golden.subject)
    with subject.use_engine(golden.engine):
        # (a build must not happen inside lower_cpu_emulation, where a reader would start it)
        lazy = run is not None and not compat.emulates_lower_cpu(golden.engine)
        today: Any = (
            _LazyToday(golden, isa_class, run) if lazy else _today_for(golden, isa_class)  # type: ignore[arg-type]
        )
        read = isolation.resolve(reader) if reader else None
        return _numbers(golden, fmt_name, isa_class, today, read)


#: ``run`` of a Built whose builder left the default (call the model on the inputs)
_DEFAULT_RUN = "default"


def _run_name(today: Built, inputs: tuple[Any, ...]) -> str | None:
    """How a worker can run a model the way ``today`` does without building the case:
    :data:`_DEFAULT_RUN`, or the module-level function ``today.run`` by name; None when it cannot
    (then the worker builds today's case itself), including a build whose inputs are not the
    stored ones."""
    if today.inputs is not inputs:
        return None
    if today.run is Built.__dataclass_fields__["run"].default:
        return _DEFAULT_RUN
    try:
        return isolation.task_name(today.run)
    except TypeError:
        return None


class _LazyToday:
    """Today's build as a reader in a worker sees it, built only when the reader asks for more
    than the stored inputs and how to run a model: loading a TorchScript, exported or packaged
    artifact and running it needs no rebuild of today's case (quantize, calibrate, script,
    trace, export), which the worker child would otherwise redo for every load (a fork keeps
    nothing). Any other field builds the case as before."""

    def __init__(self, golden: Golden, isa_class: str, run: str) -> None:
        self._golden, self._isa_class = golden, isa_class
        self.inputs = _inputs_for(golden, isa_class)
        self.run = _default_run if run == _DEFAULT_RUN else isolation.resolve(run)

    def __getattr__(self, name: str) -> Any:  # only for fields not set in __init__
        if name.startswith("__"):
            raise AttributeError(name)
        built = self.__dict__.get("_built")
        if built is None:
            built = self._built = _today_for(self._golden, self._isa_class)
        return getattr(built, name)


def _default_run(model: Any, inputs: tuple[Any, ...]) -> Any:
    return model(*inputs)


def _reader_name(fmt: Any) -> str | None:
    try:
        return isolation.task_name(fmt.read)
    except TypeError:  # e.g. a lambda: the worker uses the registered format's reader
        return None


#: modules a worker imports once (harness.isolation's ``preload``, never run there) before it
#: forks the loads of a format: otherwise every forked child imports them again, 1-3.5 s each
#: (torch.export's deserializer pulls in torch._dynamo and sympy; a package's quantization
#: transform traces with FX, which does too). Measured on this VNNI machine: an exported load
#: 2.3 -> 0.1 s, a package load 4.5 -> 1.4 s, in a fresh child.
PRELOAD: dict[str, tuple[str, ...]] = {
    "exported": ("torch._export.serde.serialize",),
    "package": ("torch._export.serde.serialize",),
}


def _preload_for(fmt: Any) -> tuple[str, ...]:
    """What a worker preloads for loads of ``fmt``: :data:`PRELOAD`, and qbc's own reader."""
    reader = getattr(fmt.read, "__module__", None) or ""
    return (*((reader,) if reader.startswith("harness.") else ()), *PRELOAD.get(fmt.name, ()))


def _in_worker(
    item: CheckItem, isa_class: str, env: dict[str, str], isa_rec: IsaRecord, ctx: LoadContext
) -> Any:
    """The check's numbers computed in a worker process (harness.isolation) started with
    ``env``: a load that can run code from the golden is sandboxed there (harness.sandbox;
    skipped where no sandbox works, unless the store is trusted)."""
    g = item.golden
    fmt = get_format(item.fmt)
    sandboxed = _sandboxed(fmt, ctx)
    if not env:
        grouped = _grouped_numbers(item, isa_class, isa_rec, ctx, sandboxed)
        if grouped is not _UNGROUPED:
            return grouped
    try:
        return isolation.run(
            numbers_in_worker,
            str(g.store),
            g.id,
            item.fmt,
            isa_class,
            _reader_name(fmt),
            _run_name(ctx.today, _inputs_for(g, isa_class, replay=False)),
            env=env,
            sandboxed=sandboxed,
            preload=_preload_for(fmt),
        )
    except isolation.TaskProblem as problem:
        raise _load_failure(
            item, problem, f"\nfile: {g.path(item.fmt, isa_class)}", isa_rec
        ) from None


def _sandboxed(fmt: Any, ctx: LoadContext) -> bool:
    """Whether a worker load of ``fmt`` runs confined (GoldenSkip when it must be and cannot)."""
    if not isolation.needs_sandbox(fmt, ctx):
        return False
    confined = isolation.confinement(True)  # GoldenSkip when nothing can confine it
    return confined is not None and not confined.startswith("trusted")


# ---------------------------------------------------------------- one worker child per golden
#
# A golden's TorchScript archives (scripted, traced) are loaded in ONE sandboxed child of the
# worker, not one child each: a child costs a fork of the worker, the sandbox's two more forks
# and its set-up (~0.15 s of CPU here), a TorchScript load and run ~0.05 s. The runner
# (pytest plugin, or any caller) announces the checks it will run (:func:`plan_checks`); the
# first check of a golden that needs the worker computes the numbers of every announced sibling
# check that would run in the same kind of child (same sandboxing, this process's environment),
# one after the other, each under its own warning record and exception catch; the siblings then
# take theirs from :data:`_GROUPED`. If that child crashes or hangs, nothing of it is kept: the
# check that started it, and its siblings, run one child each as before, so a crash still fails
# exactly the check whose load crashed. Without an announcement nothing is grouped.

#: formats whose loads may share a child: they run code from the golden only as TorchScript,
#: which cannot change the Python of the child (a package's interned source or a trusted
#: pickle could, and might then sway a sibling's numbers: those keep a child each)
SHARED_CHILD_FORMATS = frozenset({"scripted", "traced"})
#: checks announced by the runner: (store, golden id) -> formats that will be checked
_PLANNED: dict[tuple[str, str], set[str]] = {}
#: (store, golden id, isa class) -> format -> (sha256 of the file loaded, its outcome computed
#: in a shared child), until taken; None: that golden's shared child failed, its checks run one
#: child each
_GROUPED: dict[tuple[str, str, str], dict[str, tuple[str, tuple[Any, ...]]] | None] = {}
_UNGROUPED = object()


def plan_checks(items: Any) -> None:
    """Announce checks this process is about to run (CheckItems, added to those announced
    before), so a golden's TorchScript loads can share one worker child."""
    for item in items:
        if isinstance(item, CheckItem) and item.consumer is None:
            _PLANNED.setdefault((str(item.golden.store), item.golden.id), set()).add(item.fmt)


def forget_planned() -> None:
    """Drop every announcement and every shared child's outcome not taken yet."""
    _PLANNED.clear()
    _GROUPED.clear()


def _group_members(item: CheckItem, ctx: LoadContext, sandboxed: bool) -> list[str]:
    """Announced formats of the golden whose loads run in the same kind of worker child as
    ``item``'s (in order), or [] when there is nothing to share."""
    g = item.golden
    planned = _PLANNED.get((str(g.store), g.id), set())
    if item.fmt not in planned or len(planned) < 2:
        return []
    case = get_case(g.subject, g.case)
    members = []
    for name in sorted(planned):
        try:
            fmt = get_format(name)
        except KeyError:
            continue
        if name not in SHARED_CHILD_FORMATS or name not in case.formats_for(g.engine):
            continue
        sib = dataclasses.replace(ctx, weights_only=name not in case.trusted_load)
        if not (isolation.needs_isolation(fmt, sib) or isolation.needs_sandbox(fmt, sib)):
            continue
        if _sandboxed(fmt, sib) != sandboxed:
            continue
        members.append(name)
    return members if len(members) > 1 and item.fmt in members else []


def _grouped_numbers(
    item: CheckItem, isa_class: str, isa_rec: IsaRecord, ctx: LoadContext, sandboxed: bool
) -> Any:
    """The check's numbers from its golden's shared worker child (computing them for every
    sibling the first time), or :data:`_UNGROUPED` when the check runs a child of its own."""
    g = item.golden
    key = (str(g.store), g.id, isa_class)
    if key in _GROUPED and _GROUPED[key] is None:
        return _UNGROUPED  # the shared child failed: one child per check, as before
    sha, outcome = (_GROUPED.get(key) or {}).pop(item.fmt, ("", None))
    if outcome is not None and sha != g.entry(item.fmt, isa_class).sha256:
        outcome = None  # computed for another file of that name (a store edited since)
    if outcome is None:
        members = _group_members(item, ctx, sandboxed)
        if not members:
            return _UNGROUPED
        fmts = [(name, _reader_name(get_format(name))) for name in members]
        try:
            outcomes = isolation.run(
                numbers_of_golden_in_worker,
                str(g.store),
                g.id,
                fmts,
                isa_class,
                _run_name(ctx.today, _inputs_for(g, isa_class, replay=False)),
                sandboxed=sandboxed,
                preload=tuple(
                    dict.fromkeys(m for n in members for m in _preload_for(get_format(n)))
                ),
            )
        except isolation.TaskProblem:
            _GROUPED[key] = None
            return _UNGROUPED
        outcome = outcomes.pop(item.fmt)
        _GROUPED[key] = {f: (g.entry(f, isa_class).sha256, o) for f, o in outcomes.items()}
    recorded_warnings.replay(recorded_warnings.Recorded.from_dict(d) for d in outcome[-1])
    if outcome[0] == "ok":
        return outcome[1]
    problem = isolation.TaskError(outcome[1], outcome[2])
    raise _load_failure(item, problem, f"\nfile: {g.path(item.fmt, isa_class)}", isa_rec)


def numbers_of_golden_in_worker(
    store: str,
    golden_id: str,
    fmts: list[tuple[str, str | None]],
    isa_class: str,
    run: str | None,
) -> dict[str, tuple[Any, ...]]:
    """Worker task: :func:`numbers_in_worker` of several formats of one golden in one child,
    format by format; each outcome is ``("ok", numbers, warnings)`` or ``("error", exception
    type name, message, warnings)``, its warnings recorded apart (as dicts)."""
    out: dict[str, tuple[Any, ...]] = {}
    for fmt_name, reader in fmts:
        with recorded_warnings.recording() as caught:
            try:
                result: tuple[Any, ...] = (
                    "ok",
                    numbers_in_worker(store, golden_id, fmt_name, isa_class, reader, run),
                )
            except Exception as exc:  # that format's failure, reported as its own task's was
                result = ("error", type(exc).__name__, str(exc))
        out[fmt_name] = (*result, [r.as_dict() for r in caught])
    return out


def _package_output(item: CheckItem, actual: Any, isa_rec: IsaRecord) -> Any:
    """A ``package`` load returns its output and get_attr targets: check the targets."""
    if item.fmt != "package":
        return actual
    g = item.golden
    stored = section(g.path("graph").read_text(), "get_attr") if "graph" in g.formats else None
    if stored is not None and actual["get_attr"] != stored:
        raise _fail(
            item,
            "get_attr targets changed",
            f"today {actual['get_attr']} != golden {stored}",
            check="graph",
            isa_rec=isa_rec,
        )
    return actual["output"]


@guarded  # unknown names, broken manifests, corrupt data: that golden's failure
def run_check(item: CheckItem, policy: Policy) -> CheckResult:
    """Run one check; raises GoldenFailure (with statistics and the ISA classes) or GoldenSkip;
    returns the verdict (``ok`` or ``approx``) with its ISA record."""
    __tracebackhide__ = True
    import torch

    g = item.golden
    assert g.manifest is not None  # precheck
    subject = get_subject(g.subject)  # known: precheck
    reason = subject.unavailable_reason(g.engine)
    if reason:
        raise GoldenSkip(reason)
    fmt = get_format(item.fmt)
    plan = isa_plan(g.manifest)
    exact = IsaRecord(plan.golden, plan.machine, "exact")
    path = g.path(item.fmt, plan.golden)  # integrity first, for every file we touch
    if item.consumer:
        verdict = run_downstream(item, policy, path, g.path("input", plan.golden), plan)
        return CheckResult("ok", exact, verdict)
    with subject.use_engine(g.engine):
        today = _today_for(g, plan.golden)
        if fmt.role == "graph":
            if path.stat().st_size > MAX_SIGNATURE_BYTES:
                raise _fail(
                    item,
                    "graph signature too large",
                    f"{path} is {path.stat().st_size} bytes; a signature is a few KB "
                    f"(limit {MAX_SIGNATURE_BYTES}): not read, not diffed",
                    check="graph",
                )
            stored = path.read_text()
            today_sig = today.get("signature")
            if today_sig != stored:
                diff = "".join(
                    difflib.unified_diff(
                        stored.splitlines(True),
                        (today_sig or "").splitlines(True),
                        "golden",
                        "today",
                    )
                )
                raise _fail(
                    item, "graph signature changed", _capped(diff), check="graph", isa_rec=exact
                )
            return CheckResult("ok", exact)
        if fmt.role == "aux":
            fmt.read(path, None)
            return CheckResult("ok", exact)
        if fmt.role == "data":
            actual = tuple(BuildContext(get_case(g.subject, g.case), g.engine).make_inputs())
            verdict = judge(
                actual,
                fmt.read(path, None),
                policy,
                _where(g, "data", plan.golden, plan.machine, "exact"),
            )
            if not verdict.ok:
                raise _numeric_failure(item, "data", verdict.message(), verdict, exact)
            return CheckResult("ok", exact, verdict)

        check = "reproduce" if fmt.role == "reproduce" else "load"
        expected = torch.load(g.path("expected", plan.golden), weights_only=True)
        ctx = LoadContext(
            today.inputs,
            today,
            g.engine,
            weights_only=item.fmt not in get_case(g.subject, g.case).trusted_load,
        )
        if check == "load" and (
            isolation.needs_isolation(fmt, ctx) or isolation.needs_sandbox(fmt, ctx)
        ):
            # In a worker process: a native crash or hang fails this golden, not the run.
            actual = _in_worker(item, plan.golden, {}, exact, ctx)
        else:
            try:
                actual = _numbers(g, item.fmt, plan.golden, today)
            except Exception as exc:
                if check == "reproduce":
                    raise
                problem = isolation.TaskError(type(exc).__name__, str(exc))
                raise _load_failure(item, problem, f"\nfile: {path}", exact) from exc
        actual = _package_output(item, actual, exact)
        verdict = judge(
            actual, expected, policy, _where(g, check, plan.golden, plan.machine, "exact")
        )
        if verdict.ok:
            if check == "reproduce":  # what quantizing costs, for the report (export-based)
                verdict.float_sqnr_db = sqnr_vs_float(today)
            return CheckResult("ok", exact, verdict)

        if plan.mode == "capped":
            rec = IsaRecord(plan.golden, plan.machine, "capped")
            capped = _package_output(item, _in_worker(item, plan.golden, plan.env, rec, ctx), rec)
            verdict = judge(
                capped, expected, policy, _where(g, check, plan.golden, plan.golden, "capped")
            )
            if verdict.ok:
                return CheckResult("ok", rec, verdict)
            raise _numeric_failure(
                item, check, _detail(item, today, verdict, plan.golden), verdict, rec
            )

        if plan.mode == "approx":
            rec = IsaRecord(plan.golden, plan.machine, "approx", plan.reason)
            drift = judge(
                today.expected,
                expected,
                policy,
                _where(g, "reproduce", plan.golden, plan.machine, "approx"),
            )
            if check == "reproduce":
                if drift.ok:
                    return CheckResult("approx", rec, drift)
                raise _numeric_failure(
                    item, check, _detail(item, today, drift, plan.golden), drift, rec
                )
            # A load check across classes: the artifact must behave exactly like today's build
            # here (a changed weight fails), and today's build must match the golden within
            # the ISA rules.
            same = judge(
                actual,
                today.expected,
                policy,
                _where(g, "load", plan.machine, plan.machine, "exact"),
            )
            if same.ok and drift.ok:
                return CheckResult("approx", rec, drift)
            parts = []
            if not same.ok:
                parts.append(
                    "the artifact, run here, differs from today's build run here:\n"
                    + same.message()
                )
            if not drift.ok:
                parts.append(
                    "today's build here differs from the golden beyond the ISA rules:\n"
                    + drift.message()
                )
            raise _numeric_failure(
                item, check, "\n".join(parts), same if not same.ok else drift, rec
            )

        raise _numeric_failure(
            item, check, _detail(item, today, verdict, plan.golden), verdict, exact
        )


def sqnr_vs_float(today: Built) -> float | None:
    """SQNR (dB) of today's quantized output against its float model's on the same inputs:
    what quantizing costs (export-based cases keep their float model); None without one."""
    if today.float_model is None:
        return None
    import copy

    import torch

    from harness.policy import compare_leaf

    with torch.no_grad():
        reference = copy.deepcopy(today.float_model).eval()(*today.inputs)
    if not (isinstance(reference, torch.Tensor) and isinstance(today.expected, torch.Tensor)):
        return None
    if reference.shape != today.expected.shape:
        return None
    return compare_leaf("output", today.expected.float(), reference.float()).sqnr_db


def run_downstream(
    item: CheckItem, policy: Policy, path: Path, input_path: Path, plan: IsaPlan
) -> Verdict:
    """The exported golden at ``path``, lowered by the downstream consumer ``item.consumer`` and
    run on the stored input, reproduces the stored expected output within policy (check
    ``downstream``); for a consumer that delegates, nothing but the delegate's plumbing stays
    outside (check ``delegation``: the failure names the ops left outside).

    The lowering runs in a forked child (a crash, abort or hang fails this golden only) of a
    worker process that imported and warmed up the consumer once (harness.downstream).
    """
    import torch

    consumer = downstream.get_consumer(item.consumer or "")
    reason = downstream.unavailable_reason(consumer.name)
    if reason:
        raise GoldenSkip(reason)
    if not isolation.enabled():
        # a runtime's failed assertion aborts its process (ExecuTorch's kernels do): in the
        # runner itself, that would end the run rather than fail this golden
        raise GoldenSkip(
            f"downstream consumer {consumer.name} lowers only in a forked child; isolation is "
            "off here (--no-isolation / QBC_ISOLATION=0)"
        )
    inputs = tuple(torch.load(input_path, weights_only=True))
    expected = torch.load(item.golden.path("expected", plan.golden), weights_only=True)
    memo = downstream.MEMO.get(consumer.name, {})
    try:
        # in a zygote of this consumer's own, which warmed it up once (not this process: the
        # lowering never runs here)
        result = isolation.run(
            downstream.lower_and_run,
            consumer.name,
            str(path),
            inputs,
            memo,
            env=downstream.worker_environment(consumer.name),
            timeout=downstream.TIMEOUT,
        )
    except isolation.IsolatedLoadProblem as problem:
        kind, detail = isolation.describe(problem)
        error = problem.type_name if isinstance(problem, isolation.LoadError) else None
        what = "lowering failed" if kind is isolation.ProblemKind.LOAD_ERROR else kind.value
        raise _fail(
            item,
            f"{consumer.name}: {what}",
            f"{detail}\nfile: {path}",
            check="downstream",
            error=error or type(problem).__name__,
        ) from None
    downstream.remember(consumer.name, result)
    if consumer.whole_graph_delegated and result["outside"]:
        raise _fail(
            item,
            f"{consumer.name}: ops left outside the delegate",
            f"{result['delegates']} delegate(s); outside: {', '.join(result['outside'])}",
            check="delegation",
        )
    where = _where(
        item.golden, "downstream", plan.golden, plan.machine, "exact", consumer=consumer.name
    )
    verdict = judge(result["output"], expected, policy, where)
    verdict.delegates = result["delegates"]
    if not verdict.ok:
        raise _fail(
            item,
            f"{consumer.name}: output differs from the golden beyond policy",
            verdict.message(),
            check="downstream",
        )
    return verdict


def _numeric_failure(
    item: CheckItem, check: str, detail: str, verdict: Verdict, isa_rec: IsaRecord
) -> GoldenFailure:
    failure = _fail(
        item,
        f"{check} check: output differs from the golden beyond policy",
        detail,
        check=check,
        isa_rec=isa_rec,
    )
    failure.drift = verdict_record(verdict)  # the report plots failed checks too
    return failure


def _detail(item: CheckItem, today: Built, verdict: Verdict, isa_class: str) -> str:
    where = first_divergence(item, today, isa_class)
    return verdict.message() + (f"\n{where}" if where else "")


def verdict_record(result: CheckResult | Verdict | None) -> dict[str, Any]:
    """Drift numbers of a numeric check, for reports: the worst leaf's error, the policy's limit
    for it, and SQNR (empty when the check compared nothing numeric)."""
    verdict = result.judged if isinstance(result, CheckResult) else result
    if verdict is None or not verdict.stats:
        return {}
    numeric = [s for s in verdict.stats if s.problem is None] or verdict.stats
    worst = max(numeric, key=lambda s: s.max_steps)
    record = {
        "max_steps": worst.max_steps,
        "mismatched": sum(s.mismatched for s in verdict.stats),
        "min_sqnr_db": min(s.sqnr_db for s in verdict.stats),
    }
    if worst.limit_steps is not None:
        record["limit_steps"] = worst.limit_steps
    if verdict.delegates is not None:
        record["delegates"] = verdict.delegates
    if verdict.float_sqnr_db is not None:
        record["sqnr_vs_float_db"] = round(verdict.float_sqnr_db, 2)
    return record


def test_golden(
    qbc_check: CheckItem,
    qbc_policy: Policy,
    qbc_known_breaks: list[KnownBreak],
    record_property: Callable[[str, Any], None],
) -> None:
    """One golden format: it loads today and reproduces the stored outputs (see module doc).

    A check covered by a known break must fail the way the entry says (then it is an xfail);
    failing another way is a failure that names the entry, and passing is news (XPASS, a
    failure too, recorded as ``qbc_known_break_fixed``) until the entry is removed or narrowed.
    """
    __tracebackhide__ = True  # a failure shows the golden's message, not the runner's frames
    import pytest

    # first: whatever happens next, the result is named by its check id (harness.results)
    record_property(CHECK_ID_PROPERTY, qbc_check.id)
    record_property("qbc_sandbox", confinement_of(qbc_check))
    if qbc_check.consumer:
        record_property(CONSUMER_PROPERTY, downstream.consumer_info(qbc_check.consumer))
    entry = known_break(qbc_check, qbc_known_breaks)
    if entry is not None:
        record_property("qbc_known_break", entry.name)
    # Warnings are recorded with the check, never raised: the verdict is the numbers' and the
    # graph's, whatever warning filters the process runs under (see harness.recorded_warnings).
    with recorded_warnings.recording() as caught:
        try:
            result = run_check(qbc_check, qbc_policy)
        except GoldenSkip as exc:
            record_property("qbc_isa", _isa_record(qbc_check.golden).as_dict())
            pytest.skip(str(exc))
        except GoldenFailure as exc:
            # which ISA classes were compared, and how: every failure names them
            rec = getattr(exc, "isa", None) or _isa_record(qbc_check.golden)
            record_property("qbc_isa", rec.as_dict())
            if exc.drift:  # numbers of a failed numeric check: the report plots them
                record_property(DRIFT_PROPERTY, exc.drift)
            if entry is None:
                raise
            mismatch = entry.mismatch(Failure(check=exc.check, error=exc.error, message=str(exc)))
            if mismatch is None:
                pytest.xfail(f"known break {entry.name}: {entry.reason}")
            raise GoldenFailure(
                f"known break {entry.name} expects: {entry.expectation()}; {mismatch}:\n{exc}",
                check=exc.check,
                error=exc.error,
            ) from None
        finally:
            record_property("qbc_warnings", recorded_warnings.summarize(caught))
    record_property(DRIFT_PROPERTY, verdict_record(result))
    record_property("qbc_isa", result.isa.as_dict())
    if entry is None:  # ok, or approx (across ISA classes by the ISA rules): counted apart
        record_property("qbc_verdict", result.verdict)
    if entry is not None:
        record_property("qbc_known_break_fixed", True)
        pytest.fail(
            f"XPASS known break {entry.name}: this check passed, but the entry expects: "
            f"{entry.expectation()} ({entry.reason}). Remove or narrow the entry in the "
            "known-breaks file.",
            pytrace=False,
        )


def confinement_of(item: CheckItem) -> str | None:
    """How the check's load is confined (:func:`harness.isolation.confinement`): None when it
    runs no code from the golden (or is not a load), else the sandbox or ``trusted: ...``."""
    try:
        fmt = get_format(item.fmt)
        trusted_load = get_case(item.golden.subject, item.golden.case).trusted_load
        return isolation.confinement(fmt.runs_code_on_load or item.fmt in trusted_load)
    except (GoldenSkip, KeyError):
        return None
