"""Check results: one typed record per golden check, and the results file that holds them.

The pytest plugin writes one :class:`CheckResult` per check (``qbc verify --json``,
``pytest --qbc-results``); the report's matrix, drift and breaks, ``qbc verify``'s summary and
the committed per-consumer files under ``docs/compat/`` read them. Helpers adding a field to a
result row add it here, with a default, so every reader sees the same record.

The file is strict JSON (RFC 8259: no ``NaN`` / ``Infinity``): a non-finite number, e.g. the
SQNR of a bit-exact check, is written as the string ``"inf"``, ``"-inf"`` or ``"nan"`` and read
back as a float. Two layouts are read: a list of rows (what the plugin writes) or the compact
one-consumer form ``{"consumer": {...}, "rows": [...]}`` (``qbc report --format results``).

This module imports nothing from harness and no torch: the pytest plugin imports it at start-up.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: user property holding the check id, recorded first thing by ``harness.verify.test_golden``
CHECK_ID_PROPERTY = "qbc_check"
#: user property holding the drift numbers (max error in steps, mismatched, SQNR, limit)
DRIFT_PROPERTY = "qbc_drift"
#: user property naming a downstream runtime that ran the check (harness.downstream: its id,
#: runtime name and versions); without it the row's consumer is the process's torch and qbc
CONSUMER_PROPERTY = "qbc_consumer"
#: user property -> CheckResult field: what a check records with ``record_property`` lands in
#: its result row (a helper adding a field adds its property here)
PROPERTY_FIELDS = {
    DRIFT_PROPERTY: "drift",
    CONSUMER_PROPERTY: "consumer",
    "qbc_verdict": "verdict",
    "qbc_isa": "isa",
    "qbc_warnings": "warnings",
    "qbc_known_break": "known_break",
    "qbc_sandbox": "sandbox",
}

#: pytest outcome -> verdict (DESIGN: ok, approx, known break, failed; skipped is not a verdict
#: about the code). ``approx`` is decided by the check itself and recorded as a property.
VERDICT_OF_OUTCOME = {
    "passed": "ok",
    "failed": "failed",
    "xpass": "failed",
    "xfail": "known_break",
    "skipped": "skipped",
}

ID_PARTS = ("subject", "producer", "engine", "case", "format")

#: what identifies a recorded warning in reports (its line number is left out: it moves
#: between torch patch releases while the warning stays the same)
WARNING_FIELDS = ("origin", "category", "message")


class ResultsProblem(ValueError):
    """A results file that cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check ``<subject>/<producer>/<engine>/<case>/<format>``."""

    subject: str
    producer: str
    engine: str
    case: str
    format: str
    #: pytest's outcome: passed, failed, skipped, xfail, xpass
    outcome: str
    #: ok, approx, known_break, failed, skipped (derived from the outcome unless recorded)
    verdict: str = ""
    #: the failure (first line: what went wrong and where; then statistics), the known break's
    #: reason, or the skip reason
    message: str = ""
    duration: float = 0.0
    #: who ran the check, described like a producer: {"id", "torch", "qbc", "python"}
    consumer: Mapping[str, str] = field(default_factory=dict)
    #: max_steps, mismatched, min_sqnr_db of the worst leaf, and limit_steps (the policy's
    #: max_steps for it); recorded for failed numeric checks too. Empty: not a numeric check.
    drift: Mapping[str, float] = field(default_factory=dict)
    #: {"golden": class, "machine": class, "mode": "exact" | "capped" | "approx"} (issue 11)
    isa: Mapping[str, str] | None = None
    #: warnings raised while the check ran, {"origin", "category", "message", "location"}:
    #: recorded, never judged (harness.recorded_warnings)
    warnings: Sequence[Mapping[str, Any]] = ()
    #: the name of the known-breaks entry covering this check (harness.policy.KnownBreak)
    known_break: str | None = None
    #: how a load that can run code from the golden was confined (harness.sandbox): the
    #: sandbox's description, or "trusted: ..." under --trust without one; None: runs no code
    sandbox: str | None = None
    #: fields written by a newer qbc or a plug-in: kept, and written back unchanged
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "warnings", tuple(self.warnings))
        if not self.verdict:
            object.__setattr__(self, "verdict", VERDICT_OF_OUTCOME.get(self.outcome, "failed"))

    @property
    def id(self) -> str:
        return f"{self.golden_id}/{self.format}"

    @property
    def base_format(self) -> str:
        """The golden's format: a downstream check ``exported@onnxruntime`` is of ``exported``
        (its ``consumer`` names the runtime that read it)."""
        return self.format.split("@", 1)[0]

    @property
    def golden_id(self) -> str:
        return f"{self.subject}/{self.producer}/{self.engine}/{self.case}"

    @property
    def consumer_id(self) -> str:
        return self.consumer.get("id", "")

    @property
    def bad(self) -> bool:
        """A regression: a failed check, or a known break that no longer happens (xpass)."""
        return self.outcome in ("failed", "xpass")

    @property
    def cause(self) -> str:
        """What went wrong, without where: the first line of the message up to ``: subject``
        (``load check: output differs from the golden beyond policy``); for known breaks and
        skips, the whole first line."""
        head = self.message.splitlines()[0] if self.message else ""
        what, sep, _where = head.partition(": subject ")
        return what if sep else head

    @classmethod
    def from_id(cls, check_id: str, outcome: str, **fields: Any) -> CheckResult:
        parts = check_id.split("/")
        if len(parts) != len(ID_PARTS):
            raise ValueError(
                f"check id {check_id!r} is not <subject>/<producer>/<engine>/<case>/<format>"
            )
        return cls(**dict(zip(ID_PARTS, parts, strict=True)), outcome=outcome, **fields)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckResult:
        """A row as written by :meth:`to_dict` (or by an older qbc, which wrote only ``id``)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        row = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != "id"}
        extra.update(data.get("extra") or {})
        row["drift"] = {k: _number(v) for k, v in (row.get("drift") or {}).items()}
        if "subject" not in row:
            return cls.from_id(data["id"], **row, extra=extra)
        return cls(**row, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, strict: non-finite drift numbers become strings."""
        out: dict[str, Any] = {"id": self.id}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ID_PARTS or f.name == "extra":
                continue
            if f.name in ("isa", "known_break") and value is None:
                continue
            if f.name == "drift":
                value = {k: _json_number(v) for k, v in value.items()}
            elif isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        out.update(self.extra)
        return out


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _number(value: Any) -> Any:
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value


def as_results(rows: Iterable[CheckResult | Mapping[str, Any]]) -> list[CheckResult]:
    """Rows as :class:`CheckResult` (JSON rows converted, records passed through)."""
    return [r if isinstance(r, CheckResult) else CheckResult.from_dict(r) for r in rows]


def dumps(results: Iterable[CheckResult]) -> str:
    """The results file's text: rows sorted by id, strict JSON."""
    rows = [r.to_dict() for r in sorted(results, key=lambda r: r.id)]
    return json.dumps(rows, indent=1, allow_nan=False) + "\n"


def write_results(path: Path, results: Iterable[CheckResult]) -> None:
    Path(path).write_text(dumps(results))


def read_results(path: Path) -> list[CheckResult]:
    """Rows of a results file (either layout); :class:`ResultsProblem` naming the file when it
    is missing, not JSON or not rows."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ResultsProblem(f"results file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsProblem(f"results file {path} cannot be read: {exc}") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise ResultsProblem(f"results file {path} is not valid JSON: {exc}") from None
    try:
        if isinstance(data, dict):
            return [CheckResult.from_dict(r) for r in _expand_compact(data)]
        if not isinstance(data, list):
            raise TypeError(f"a JSON {type(data).__name__}")
        return [CheckResult.from_dict(r) for r in data]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ResultsProblem(
            f"results file {path} does not hold check results (`qbc verify --json` rows): "
            f"{type(exc).__name__}: {exc}"
        ) from None


def _expand_compact(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the compact form, each with its consumer and its warnings (``w``: indexes into
    the file's ``warnings`` table) spelled out."""
    table = data.get("warnings", [])
    rows = []
    for r in data["rows"]:
        row = {"consumer": data["consumer"], **{k: v for k, v in r.items() if k != "w"}}
        if "w" in r:
            row["warnings"] = [table[i] for i in r["w"]]
        rows.append(row)
    return rows


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard literal {name} (not JSON)")
