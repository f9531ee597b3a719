"""Check results: the typed record the plugin writes and every report reads, in strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.results import CheckResult, ResultsProblem, read_results, write_results

CID = "qbc/torch-2.13.0_qbc-0.1.0/fbgemm/linear/expected"
CONSUMER = {"id": "torch-2.13.0_qbc-0.1.0", "torch": "2.13.0+cpu", "qbc": "0.1.0", "python": "3"}


def test_a_result_names_its_parts_and_reads_its_cause_from_the_first_line() -> None:
    message = (
        "load check: output differs from the golden beyond policy: subject qbc, producer "
        "torch-2.13.0_qbc-0.1.0, engine fbgemm, case linear, format expected\nmax error 3 steps"
    )
    r = CheckResult.from_id(CID, "failed", message=message)

    assert (r.subject, r.producer, r.engine, r.case, r.format) == (
        "qbc", "torch-2.13.0_qbc-0.1.0", "fbgemm", "linear", "expected",
    )  # fmt: skip
    assert r.id == CID
    assert r.cause == "load check: output differs from the golden beyond policy"
    assert (r.verdict, r.bad) == ("failed", True)


@pytest.mark.parametrize(
    ("outcome", "verdict"),
    [("passed", "ok"), ("xfail", "known_break"), ("xpass", "failed"), ("skipped", "skipped")],
)
def test_the_verdict_follows_the_outcome_unless_recorded(outcome: str, verdict: str) -> None:
    assert CheckResult.from_id(CID, outcome).verdict == verdict
    assert CheckResult.from_id(CID, outcome, verdict="approx").verdict == "approx"


def test_results_files_are_strict_json_and_read_back_infinities(tmp_path: Path) -> None:
    # a bit-exact check has an infinite SQNR: written as the string "inf", never `Infinity`
    exact = CheckResult.from_id(
        CID, "passed", consumer=CONSUMER, drift={"max_steps": 0.0, "min_sqnr_db": math.inf}
    )
    path = tmp_path / "results.json"
    write_results(path, [exact])

    text = path.read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert '"min_sqnr_db": "inf"' in text
    assert read_results(path) == [exact]


def test_fields_a_newer_qbc_wrote_are_kept_and_written_back(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"id": CID, "outcome": "passed", "downstream": {"ort": "ok"}}]))

    (r,) = read_results(path)
    write_results(path, [r])

    assert json.loads(path.read_text())[0]["downstream"] == {"ort": "ok"}


def test_the_compact_one_consumer_form_gives_every_row_its_consumer(tmp_path: Path) -> None:
    path = tmp_path / "compact.json"
    path.write_text(json.dumps({"consumer": CONSUMER, "rows": [{"id": CID, "outcome": "passed"}]}))

    assert [r.consumer_id for r in read_results(path)] == ["torch-2.13.0_qbc-0.1.0"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "does not exist"),
        ('[{"id": "x"', "is not valid JSON"),
        ('[{"id": "a/b", "outcome": "passed"}]', "does not hold check results"),
        ("[NaN]", "is not valid JSON"),
    ],
)
def test_an_unreadable_results_file_is_one_message_naming_it(
    tmp_path: Path, text: str | None, problem: str
) -> None:
    path = tmp_path / "results.json"
    if text is not None:
        path.write_text(text)

    with pytest.raises(ResultsProblem) as e:
        read_results(path)

    assert str(path) in str(e.value) and problem in str(e.value)
