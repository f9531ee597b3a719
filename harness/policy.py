"""Tolerance policy (data in ``harness/data/policy.toml``) and the numeric comparison it judges.

Outputs (tensors, tuples, dicts of tensors, quantized tensors) are flattened into named leaves;
each leaf is compared in quantization steps of the output (see the policy file for the
definition of a step per dtype), giving :class:`Stats`; the matching policy decides.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness import isa

try:
    import tomllib
except ModuleNotFoundError:  # python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DATA = Path(__file__).parent / "data"
DEFAULT_POLICY = DATA / "policy.toml"
DEFAULT_KNOWN_BREAKS = DATA / "known_breaks.toml"
#: keys a rule matches on (fnmatch globs); ``golden_isa`` / ``machine_isa`` are ISA classes
#: (harness.isa), ``isa_mode`` how the comparison was made (see :data:`ISA_MODES`)
MATCH_KEYS = (
    "subject",
    "engine",
    "case",
    "dtype",
    "producer",
    "check",
    "consumer",
    "golden_isa",
    "machine_isa",
    "isa_mode",
)
#: the limits a rule grants; see :meth:`Policy.tolerance` for how they compose
LIMIT_KEYS = ("atol_steps", "max_steps", "mismatch_budget", "min_sqnr_db")
#: how a check's numbers were obtained: ``exact`` on this machine's own class (or a golden
#: class computed natively), ``capped`` in a worker capped to the golden's class, ``approx``
#: across classes when neither was possible; only ``approx`` comparisons may use ISA rules
ISA_MODES = isa.MODES
_OTHER_KEYS = ("reason", "measured")
# Composing two grants of one limit keeps the more permissive (a rule can only widen).
_LOOSER = {"atol_steps": max, "max_steps": max, "mismatch_budget": max, "min_sqnr_db": min}


@dataclass(frozen=True)
class Tolerance:
    atol_steps: float = 0.0
    max_steps: float = 0.0
    mismatch_budget: float = 0.0
    min_sqnr_db: float = 0.0
    reasons: tuple[str, ...] = ()

    def budget(self, numel: int) -> int:
        """Elements of an ``numel``-element output allowed to exceed ``atol_steps``: the
        fraction ``mismatch_budget`` of them, rounded down, but at least one when the fraction
        is above zero (a 5 % budget on a 4-element output allows one element, not none)."""
        if self.mismatch_budget <= 0:
            return 0
        return max(1, math.floor(self.mismatch_budget * numel))


@dataclass(frozen=True)
class Where:
    """What a comparison is about; rules match on these."""

    subject: str
    engine: str
    case: str
    producer: str
    check: str
    #: ISA class of the numbers the golden holds for this comparison
    golden_isa: str
    #: ISA class the numbers compared with them were computed in
    machine_isa: str
    isa_mode: str = "exact"
    #: who reads the golden: "torch" (today's torch and qbc) or a downstream consumer
    #: (harness.downstream: "executorch", "onnxruntime", ...)
    consumer: str = "torch"


class PolicyError(ValueError):
    """A policy file that cannot be used as written (unknown key, bad value)."""


class Policy:
    """The tolerance policy: ``[default]`` limits and ``[[rule]]`` grants (harness/data/policy.toml)."""

    def __init__(self, data: dict[str, Any]) -> None:
        default = data.get("default", {})
        unknown = set(default) - set(LIMIT_KEYS)
        if unknown:
            raise PolicyError(f"[default] has unknown keys {sorted(unknown)}; known: {LIMIT_KEYS}")
        self.default = {k: float(v) for k, v in default.items()}
        self.rules: list[dict[str, Any]] = list(data.get("rule", []))
        for i, rule in enumerate(self.rules):
            unknown = set(rule) - set(MATCH_KEYS) - set(LIMIT_KEYS) - set(_OTHER_KEYS)
            if unknown:
                raise PolicyError(
                    f"rule {i + 1} has unknown keys {sorted(unknown)}; match keys: "
                    f"{', '.join(MATCH_KEYS)}; limits: {', '.join(LIMIT_KEYS)}"
                )

    @classmethod
    def load(cls, path: Path | None = None) -> Policy:
        with open(path or DEFAULT_POLICY, "rb") as f:
            return cls(tomllib.load(f))

    def matches(self, rule: dict[str, Any], where: Where, dtype: str) -> bool:
        """Whether every match key ``rule`` sets matches ``where`` (and the output dtype)."""
        keys = {**where.__dict__, "dtype": dtype}
        return all(fnmatch.fnmatchcase(str(keys[k]), str(rule[k])) for k in MATCH_KEYS if k in rule)

    def tolerance(self, where: Where, dtype: str) -> Tolerance:
        """The limits for one output leaf.

        Every matching rule grants the limits it sets. Per limit, the grants compose to the
        most permissive one (largest ``atol_steps``, ``max_steps``, ``mismatch_budget``;
        smallest ``min_sqnr_db``), whatever the file order, so one rule never resets what
        another matching rule allowed; ``[default]`` holds for a limit no matching rule sets.
        ``reasons`` lists every matching rule that grants something.
        """
        granted: dict[str, float] = {}
        reasons: list[str] = []
        for rule in self.rules:
            if not self.matches(rule, where, dtype):
                continue
            for key in LIMIT_KEYS:
                if key in rule:
                    value = float(rule[key])
                    granted[key] = _LOOSER[key](granted[key], value) if key in granted else value
            if "reason" in rule and any(k in rule for k in LIMIT_KEYS):
                reasons.append(rule["reason"])
        limits = {k: granted.get(k, self.default.get(k, 0.0)) for k in LIMIT_KEYS}
        return Tolerance(**limits, reasons=tuple(reasons))

    def lint(self, known: dict[str, list[str]]) -> list[str]:
        """Problems of the rules themselves: limits out of range, limits that contradict each
        other, a rule that can never match, an ISA rule outside ``approx`` comparisons.

        ``known`` maps match keys to the values that exist (subjects, engines, cases, dtypes,
        producers, checks, ISA classes, modes); a glob that matches none of them never matches.
        """
        problems: list[str] = []
        for i, rule in enumerate(self.rules):
            name = f"rule {i + 1} ({rule.get('reason', 'no reason')!r})"
            if "reason" not in rule:
                problems.append(f"{name}: says no reason")
            if not any(k in rule for k in LIMIT_KEYS):
                problems.append(f"{name}: grants no limit")
            for key in LIMIT_KEYS:
                value = rule.get(key)
                if value is None:
                    continue
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    problems.append(f"{name}: {key} = {value!r} is not a number")
                elif not math.isfinite(value) or value < 0:
                    problems.append(f"{name}: {key} = {value!r} cannot be met")
                elif key == "mismatch_budget" and value > 1:
                    problems.append(f"{name}: mismatch_budget {value} is over 1 (all elements)")
            atol = rule.get("atol_steps", self.default.get("atol_steps", 0.0))
            most = rule.get("max_steps", self.default.get("max_steps", 0.0))
            numbers = all(isinstance(x, (int, float)) and x >= 0 for x in (atol, most))
            if numbers and atol > most:
                problems.append(
                    f"{name}: atol_steps {atol} above max_steps {most}: an element within atol "
                    "already fails max_steps, so the atol it grants can never be used"
                )
            for key in MATCH_KEYS:
                if (
                    key in rule
                    and key in known
                    and not any(fnmatch.fnmatchcase(v, str(rule[key])) for v in known[key])
                ):
                    problems.append(
                        f"{name}: {key} = {rule[key]!r} matches none of "
                        f"{', '.join(sorted(known[key])[:12])}: the rule never matches"
                    )
            if ("golden_isa" in rule or "machine_isa" in rule) and rule.get("isa_mode") != "approx":
                problems.append(
                    f"{name}: matches on ISA classes but not on isa_mode = 'approx': it would "
                    "widen exact or capped comparisons, whose verdict must not depend on the ISA"
                )
        return problems


@dataclass
class Stats:
    """Comparison of one output leaf."""

    name: str
    dtype: str
    numel: int
    max_steps: float = 0.0
    mismatched: int = 0
    sqnr_db: float = math.inf
    step: float = 1.0
    problem: str | None = None  # structural difference (shape, dtype, qparams, missing leaf)
    #: the policy's max_steps for this leaf (set by judge)
    limit_steps: float | None = None

    def summary(self) -> str:
        if self.problem:
            return f"{self.name}: {self.problem}"
        return (
            f"{self.name} ({self.dtype}, {self.numel} elements, step {self.step:.6g}): max error "
            f"{self.max_steps:.4g} steps, {self.mismatched} mismatched, SQNR {self.sqnr_db:.1f} dB"
        )


@dataclass
class Verdict:
    ok: bool
    stats: list[Stats] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: delegates a downstream consumer made of the program (None: not a delegating consumer)
    delegates: int | None = None
    #: SQNR of the quantized output against the float model's (reproduce checks of cases that
    #: keep their float model), for reports; never judged
    float_sqnr_db: float | None = None

    def message(self) -> str:
        lines = self.failures + ["all leaves:"] + [f"  {s.summary()}" for s in self.stats]
        return "\n".join(lines)


def flatten(value: Any, prefix: str = "output") -> dict[str, Any]:
    """Named leaves of a nested output: tensors, and python scalars / strings as-is."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k in sorted(value, key=str):
            out.update(flatten(value[k], f"{prefix}.{k}"))
        return out
    if isinstance(value, (tuple, list)):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _qparams(t: torch.Tensor) -> tuple[Any, ...]:
    if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return (t.qscheme(), t.q_scale(), t.q_zero_point())
    return (
        t.qscheme(),
        t.q_per_channel_scales().tolist(),
        t.q_per_channel_zero_points().tolist(),
        t.q_per_channel_axis(),
    )


def dtype_name(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return str(value.dtype).removeprefix("torch.")
    return type(value).__name__


def compare_leaf(name: str, actual: Any, expected: Any) -> Stats:
    """Error statistics of ``actual`` against ``expected`` in output quantization steps."""
    from harness.compat import expected_torch_deprecations

    with expected_torch_deprecations():  # int_repr/dequantize of torch.ao quantized tensors
        return _compare_leaf(name, actual, expected)


def _same_scalar(actual: Any, expected: Any) -> bool:
    """Python values compare with ``==``, except that NaN equals NaN (a NaN the golden also
    holds is reproduced, not lost)."""
    if (
        isinstance(actual, float)
        and isinstance(expected, float)
        and (math.isnan(actual) or math.isnan(expected))
    ):
        return math.isnan(actual) and math.isnan(expected)
    return bool(actual == expected)


def _nonfinite_problem(got: torch.Tensor, ref: torch.Tensor) -> str | None:
    """Where ``got`` and ``ref`` disagree on NaN / +-inf, the problem in words; else None.

    Every comparison with NaN is False, so a tolerance check on raw differences would pass a
    NaN output; instead a NaN, inf or -inf on one side only (or infinities of opposite sign) is
    a mismatch of its own, never within tolerance. The same non-finite value on both sides at
    the same position is reproduced.
    """
    ref_nan, got_nan = ref.isnan(), got.isnan()
    ref_inf, got_inf = ref.isinf(), got.isinf()
    agree = (ref_nan & got_nan) | (ref_inf & got_inf & (ref == got))
    bad = (ref_nan | got_nan | ref_inf | got_inf) & ~agree
    count = int(bad.sum().item())
    if not count:
        return None
    first = tuple(int(i) for i in bad.nonzero()[0].tolist())
    at = f"[{', '.join(map(str, first))}]" if first else ""
    return (
        f"{count} element(s) non-finite on one side only (NaN or inf where the other has a "
        f"finite value, or opposite infinities): first at {at or 'the scalar'}, got "
        f"{got[first].item():g}, expected {ref[first].item():g}"
    )


def _compare_leaf(name: str, actual: Any, expected: Any) -> Stats:
    stats = Stats(name=name, dtype=dtype_name(expected), numel=1)
    if not isinstance(expected, torch.Tensor):
        if not _same_scalar(actual, expected):
            stats.problem = f"value {actual!r} != expected {expected!r}"
        return stats
    stats.numel = expected.numel()
    if not isinstance(actual, torch.Tensor):
        stats.problem = f"got {type(actual).__name__}, expected a tensor"
        return stats
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        stats.problem = f"got {tuple(actual.shape)} {dtype_name(actual)}, expected {tuple(expected.shape)} {stats.dtype}"
        return stats
    if expected.is_quantized:
        if _qparams(actual) != _qparams(expected):
            stats.problem = f"qparams {_qparams(actual)} != expected {_qparams(expected)}"
            return stats
        err = (
            (actual.int_repr().to(torch.int64) - expected.int_repr().to(torch.int64)).abs().double()
        )
        ref, got = expected.dequantize().double(), actual.dequantize().double()
    else:
        ref, got = expected.double(), actual.double()
        if expected.is_floating_point():
            stats.problem = _nonfinite_problem(got, ref)
            if stats.problem:
                return stats
            # Non-finite values agree from here on; they are left out of step, error and SQNR.
            finite = ref.isfinite()
            ref, got = ref[finite], got[finite]
            span = (ref.max() - ref.min()).item() if ref.numel() else 0.0
            stats.step = span / 255 if span > 0 else 1.0
        err = (got - ref).abs() / stats.step
    if err.numel():
        stats.max_steps = err.max().item()
    noise = ((got - ref) ** 2).sum().item()
    signal = (ref**2).sum().item()
    stats.sqnr_db = (
        math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    )
    stats._err = err  # type: ignore[attr-defined]  # kept for judge(); not serialized
    return stats


def judge(actual: Any, expected: Any, policy: Policy, where: Where) -> Verdict:
    """Compare every leaf and apply the matching tolerance; the verdict lists the statistics."""
    got, ref = flatten(actual), flatten(expected)
    verdict = Verdict(ok=True)
    for name in ref.keys() | got.keys():
        if name not in got or name not in ref:
            s = Stats(
                name=name,
                dtype="?",
                numel=0,
                problem="missing in " + ("actual" if name not in got else "expected"),
            )
            verdict.stats.append(s)
            verdict.failures.append(s.summary())
            continue
        s = compare_leaf(name, got[name], ref[name])
        verdict.stats.append(s)
        if s.problem:
            verdict.failures.append(s.summary())
            continue
        tol = policy.tolerance(where, s.dtype)
        s.limit_steps = tol.max_steps
        err = getattr(s, "_err", None)
        if err is not None:
            s.mismatched = int((err > tol.atol_steps).sum().item())
            del s._err  # type: ignore[attr-defined]
        budget = tol.budget(s.numel)
        if s.max_steps > tol.max_steps or s.mismatched > budget or s.sqnr_db < tol.min_sqnr_db:
            verdict.failures.append(
                f"{s.summary()} exceeds policy (max_steps {tol.max_steps:g}, mismatch budget "
                f"{budget} at atol {tol.atol_steps:g} steps, min SQNR {tol.min_sqnr_db:g} dB"
                + (f"; rules: {'; '.join(tol.reasons)}" if tol.reasons else "")
                + ")"
            )
    verdict.stats.sort(key=lambda s: s.name)
    verdict.ok = not verdict.failures
    return verdict


# ---------------------------------------------------------------- known breaks


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.strip().split(".") if p.isdigit())


def in_range(release: tuple[int, ...], spec: str) -> bool:
    """``release`` satisfies every comma-separated clause of ``spec`` (``>=2.6.0,<2.13.0``)."""
    for clause in (c.strip() for c in spec.split(",")):
        if not clause or clause == "*":
            continue
        for op in (">=", "<=", "==", ">", "<"):
            if clause.startswith(op):
                bound = _version(clause[len(op) :])
                ok = {
                    ">=": release >= bound,
                    "<=": release <= bound,
                    "==": release == bound,
                    ">": release > bound,
                    "<": release < bound,
                }[op]
                if not ok:
                    return False
                break
        else:
            raise ValueError(f"bad version clause {clause!r} in {spec!r}")
    return True


#: What a known break's ``fails`` may name: the check whose comparison fails (not an exception).
FAILING_CHECKS = ("load", "reproduce", "data", "graph", "downstream", "delegation")
_KNOWN_BREAK_KEYS = {
    "name", "reason", "measured", "subject", "case", "engine", "format", "producers",
    "consumers", "producers_qbc", "consumers_qbc", "raises", "fails", "match", "consumer",
}  # fmt: skip


@dataclass(frozen=True)
class Failure:
    """What a failed check says about itself, as far as a known break can name it: the check
    (``load``, ``reproduce``, ``data``, ``graph``, ``integrity``, ...), the exception type that
    made it fail (None for a comparison beyond policy or a changed graph), and the message."""

    check: str
    error: str | None
    message: str


@dataclass(frozen=True)
class KnownBreak:
    """One measured break: which checks (globs and release ranges), and what must happen there.

    Exactly one expectation: ``raises`` (the exception type name the check fails with, e.g.
    ``KeyError``) or ``fails`` (a check whose comparison fails: one of :data:`FAILING_CHECKS`);
    ``match`` (a regex searched in the failure message) narrows either. A matching check that
    fails as expected is a known break; one that fails otherwise is a failure; one that passes
    is news (XPASS naming ``name``).

    Ranges: ``producers`` / ``consumers`` over the torch release of the golden's producer / of
    the process running the check; ``producers_qbc`` / ``consumers_qbc`` the same over qbc
    versions (a break of qbc itself between two of its releases).
    """

    name: str
    reason: str
    measured: str = ""  # when, where and with which command the expectation was measured
    subject: str = "*"
    case: str = "*"
    engine: str = "*"
    format: str = "*"
    producers: str = "*"
    consumers: str = "*"
    producers_qbc: str = "*"
    consumers_qbc: str = "*"
    raises: str = ""
    fails: str = ""
    match: str = ""
    #: who reads the golden (glob): "torch" (today's torch and qbc), or a downstream consumer
    #: (harness.downstream: "executorch", "executorch_xnnpack", "onnxruntime", "inductor", ...)
    consumer: str = "*"

    def __post_init__(self) -> None:
        if bool(self.raises) == bool(self.fails):
            raise ValueError(
                f"known break {self.name!r}: give exactly one of raises (an exception type) "
                f"or fails (one of {', '.join(FAILING_CHECKS)}): what must happen"
            )
        if self.fails and self.fails not in FAILING_CHECKS:
            raise ValueError(
                f"known break {self.name!r}: fails = {self.fails!r}; one of "
                f"{', '.join(FAILING_CHECKS)}"
            )
        re.compile(self.match)  # a bad pattern is refused when the file is read
        for spec in (self.producers, self.consumers, self.producers_qbc, self.consumers_qbc):
            in_range((0,), spec)  # raises on a malformed range

    def matches(
        self,
        subject: str,
        case: str,
        engine: str,
        fmt: str,
        producer_torch: tuple[int, ...],
        consumer_torch: tuple[int, ...],
        producer_qbc: tuple[int, ...] = (),
        consumer_qbc: tuple[int, ...] = (),
        consumer: str = "torch",
    ) -> bool:
        """Whether the check (subject, case, engine, format) of that producer, run by that
        consumer, is covered by this entry."""
        return (
            all(
                fnmatch.fnmatchcase(v, p)
                for v, p in (
                    (subject, self.subject),
                    (case, self.case),
                    (engine, self.engine),
                    (fmt, self.format),
                    (consumer, self.consumer),
                )
            )
            and in_range(producer_torch, self.producers)
            and in_range(consumer_torch, self.consumers)
            and in_range(producer_qbc, self.producers_qbc)
            and in_range(consumer_qbc, self.consumers_qbc)
        )

    def expectation(self) -> str:
        what = f"raises {self.raises}" if self.raises else f"the {self.fails} check fails"
        return what + (f" matching /{self.match}/" if self.match else "")

    def mismatch(self, failure: Failure) -> str | None:
        """None when ``failure`` is what this entry says must happen; otherwise how it differs."""
        if self.raises and failure.error != self.raises:
            got = f"raised {failure.error}" if failure.error else f"{failure.check} check failed"
            return f"expected it to raise {self.raises}, it {got}"
        if self.fails and (failure.error is not None or failure.check != self.fails):
            got = f"raised {failure.error}" if failure.error else f"{failure.check} check failed"
            return f"expected the {self.fails} check to fail, it {got}"
        if self.match and not re.search(self.match, failure.message):
            return f"the failure message does not match /{self.match}/"
        return None


def load_known_breaks(path: Path | None = None) -> list[KnownBreak]:
    """The entries of a known-breaks TOML (``[[break]]`` tables); unknown keys, duplicate names,
    a missing expectation or a bad pattern are refused with the entry named."""
    with open(path or DEFAULT_KNOWN_BREAKS, "rb") as f:
        data = tomllib.load(f)
    entries = []
    for i, raw in enumerate(data.get("break", [])):
        label = raw.get("name", f"#{i + 1}")
        unknown = set(raw) - _KNOWN_BREAK_KEYS
        if unknown:
            raise ValueError(f"known break {label!r}: unknown keys {sorted(unknown)}")
        if "name" not in raw or "reason" not in raw:
            raise ValueError(f"known break {label!r}: every entry needs a name and a reason")
        entries.append(KnownBreak(**raw))
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"known breaks: duplicate names {dupes}")
    return entries
