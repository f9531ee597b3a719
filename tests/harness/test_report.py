"""The report: consumer dimension, what broke and why, the offline HTML page with its drift plot,
the generated docs/compatibility.md, and the golden retention policy over the committed store."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from harness import report
from harness.cli import main as qbc_main
from harness.manifest import parse_producer, producer_id
from harness.results import read_results
from harness.retention import Retention, expired, first_dates, golden_date, minor
from harness.store import iter_goldens

REPO = Path(__file__).resolve().parents[2]
STORE = REPO / "golden"
COMPAT = REPO / "docs" / "compat"
OLD, NEW = "torch-2.6.0_qbc-0.1.0", "torch-2.14.1_qbc-0.1.0"


def consumer(release: str) -> dict[str, str]:
    return {
        "id": f"torch-{release}_qbc-0.1.0",
        "torch": f"{release}+cpu",
        "qbc": "0.1.0",
        "python": "3.11.7",
    }


def row(cid: str, outcome: str, release: str, steps: float | None = None, message: str = ""):
    drift = {} if steps is None else {"max_steps": steps, "mismatched": 0, "min_sqnr_db": 40.0}
    return {
        "id": cid,
        "outcome": outcome,
        "message": message,
        "consumer": consumer(release),
        "drift": drift,
    }


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    """Two producers x two consumers of torch_ao/fbgemm/linear, plus one qbc case.

    Consumer 2.6.0 cannot read the new producer's .pt2 (a known break) and fails its scripted
    load; the drift points are (torch_ao/linear, OLD) = 2 steps (worst of 1 and 2),
    (torch_ao/linear, NEW) = 0, (qbc/conv2d, OLD) = 0.5: three marks.
    """
    lin = "torch_ao/{}/fbgemm/linear/{}"
    return [
        row(lin.format(OLD, "state_dict"), "passed", "2.14.1", steps=1.0),
        row(lin.format(OLD, "expected"), "passed", "2.14.1", steps=2.0),
        row(lin.format(NEW, "state_dict"), "passed", "2.14.1", steps=0.0),
        row(lin.format(NEW, "exported"), "xfail", "2.6.0", message="pt2 is not forward compatible"),
        row(
            lin.format(NEW, "scripted"), "failed", "2.6.0", message="load check: boom\nmax 9 steps"
        ),
        row(lin.format(OLD, "state_dict"), "passed", "2.6.0", steps=0.0),
        row(f"qbc/{OLD}/reference/conv2d/expected", "passed", "2.6.0", steps=0.5),
    ]


@pytest.fixture
def empty_store(tmp_path: Path) -> Path:
    (tmp_path / "golden").mkdir()
    return tmp_path / "golden"


def test_matrix_has_one_row_per_subject_engine_producer_and_consumer(rows):
    m = report.matrix(rows)
    keys = [(r["subject"], r["engine"], r["producer"], r["consumer"]) for r in m["rows"]]
    # torch_ao: 2 producers x 2 consumers = 4 rows; qbc: 1 producer x 1 consumer; torch
    # releases sort numerically (2.6 before 2.14), not as strings
    assert keys == [
        ("qbc", "reference", OLD, "torch-2.6.0_qbc-0.1.0"),
        ("torch_ao", "fbgemm", OLD, "torch-2.6.0_qbc-0.1.0"),
        ("torch_ao", "fbgemm", OLD, "torch-2.14.1_qbc-0.1.0"),
        ("torch_ao", "fbgemm", NEW, "torch-2.6.0_qbc-0.1.0"),
        ("torch_ao", "fbgemm", NEW, "torch-2.14.1_qbc-0.1.0"),
    ]
    assert m["rows"][3]["formats"] == {"exported": {"xfail": 1}, "scripted": {"failed": 1}}


def test_breaks_list_regressions_before_known_breaks_with_their_causes(rows):
    got = [(b["outcome"], b["consumer"], b["reason"], b["checks"]) for b in report.breaks(rows)]
    assert got == [
        (
            "failed",
            "torch-2.6.0_qbc-0.1.0",
            "load check: boom",  # the cause: the first line of the message
            [f"torch_ao/{NEW}/fbgemm/linear/scripted"],
        ),
        (
            "xfail",
            "torch-2.6.0_qbc-0.1.0",
            "pt2 is not forward compatible",
            [f"torch_ao/{NEW}/fbgemm/linear/exported"],
        ),
    ]


def test_breaks_group_failures_of_one_cause_across_goldens_with_the_worst_drift():
    # the same cause on two engines and two producers is one group of three checks; its worst
    # drift is the 9.98-step failure, against that check's limit of 1 step
    cause = "load check: output differs from the golden beyond policy"
    where = ": subject torch_ao, producer {}, engine {}, case linear, format {}\nstats"

    def failed(producer: str, engine: str, fmt: str, steps: float) -> dict[str, Any]:
        r = row(f"torch_ao/{producer}/{engine}/linear/{fmt}", "failed", "2.13.0")
        r["message"] = cause + where.format(producer, engine, fmt)
        r["drift"] = {"max_steps": steps, "mismatched": 3, "min_sqnr_db": 20.0, "limit_steps": 1.0}
        return r

    rows = [
        failed(OLD, "fbgemm", "scripted", 9.98),
        failed(NEW, "fbgemm", "scripted", 2.0),
        failed(OLD, "x86", "state_dict", 3.0),
    ]
    (group,) = report.breaks(rows)
    assert (group["reason"], len(group["checks"])) == (cause, 3)
    assert (group["max_steps"], group["limit_steps"]) == (9.98, 1.0)


def test_report_cli_merges_one_results_file_per_consumer(rows, tmp_path, empty_store):
    paths = []
    for release in ("2.6.0", "2.14.1"):
        path = tmp_path / f"torch-{release}.json"
        path.write_text(json.dumps([r for r in rows if r["consumer"]["torch"].startswith(release)]))
        paths += ["--results", str(path)]
    out = tmp_path / "report.md"
    code = qbc_main(
        ["report", "--format", "md", "--store", str(empty_store), *paths, "-o", str(out)]
    )
    assert code == 0
    text = out.read_text()
    assert f"| torch_ao | {NEW} | fbgemm | torch-2.6.0_qbc-0.1.0 |" in text
    assert f"| torch_ao | {NEW} | fbgemm | torch-2.14.1_qbc-0.1.0 |" in text


class _Page(HTMLParser):
    """Collects the matrix table's cells, the svg's marks, and every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.in_matrix = False
        self.matrix: list[list[str]] = []
        self.in_cell = False
        self.marks: list[dict[str, str | None]] = []
        self.svgs = 0
        self.links: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [v or "" for k, v in attrs if k in ("src", "href")]
        if tag == "script":
            self.scripts += 1
        if tag == "svg":
            self.svgs += 1
        if tag == "circle" and (a.get("class") or "").split()[:1] == ["mark"]:
            self.marks.append(a)
        if tag == "table" and a.get("id") == "matrix":
            self.in_matrix = True
        if self.in_matrix and tag == "tr":
            self.matrix.append([])
        if self.in_matrix and tag in ("td", "th"):
            self.in_cell = True
            self.matrix[-1].append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self.in_matrix = False
        if tag in ("td", "th"):
            self.in_cell = False

    def handle_data(self, data):
        if self.in_matrix and self.in_cell:
            self.matrix[-1][-1] += data


def test_html_report_is_one_offline_page_with_matrix_and_drift_plot(rows, empty_store):
    page = _Page()
    page.feed(report.render("html", rows, empty_store))
    head = page.matrix[0]
    # formats in the catalogue's order, only those that occur
    assert head[:4] == ["subject", "producer", "engine", "consumer"]
    cell = {(r[0], r[1], r[3]): dict(zip(head[4:], r[4:], strict=True)) for r in page.matrix[1:]}
    assert cell[("torch_ao", NEW, "torch-2.6.0_qbc-0.1.0")]["scripted"] == "FAIL 1"
    assert cell[("torch_ao", NEW, "torch-2.6.0_qbc-0.1.0")]["exported"] == "xfail 1"
    assert cell[("torch_ao", OLD, "torch-2.14.1_qbc-0.1.0")]["expected"] == "ok 1"
    assert page.svgs == 1
    points = {(m["data-case"], m["data-producer"]): m["data-steps"] for m in page.marks}
    assert len(page.marks) == len(points) == 3  # one mark per (case, producer)
    assert points == {("torch_ao/linear", OLD): "2", ("torch_ao/linear", NEW): "0",
                      ("qbc/conv2d", OLD): "0.5"}  # fmt: skip
    assert page.scripts == 0
    assert not [link for link in page.links if "http" in link]


def test_drift_marks_are_placed_higher_for_larger_errors(rows):
    svg = report.drift_svg(report.drift_points(rows))
    page = _Page()
    page.feed(svg)
    cy = {(m["data-case"], m["data-producer"]): float(m["cy"]) for m in page.marks}
    # svg y grows downwards: 2 steps is above 0.5 steps, which is above 0 steps
    assert cy[("torch_ao/linear", OLD)] < cy[("qbc/conv2d", OLD)] < cy[("torch_ao/linear", NEW)]


def test_drift_plot_shows_a_failed_check_against_its_limit_on_a_log_scale(rows):
    # a failure of 9.98 steps where the policy allows 1 (the worst ISA failure measured here):
    # drawn as a failed mark with its limit, above the passing 2 and 0.5 steps
    failed = row(f"torch_ao/{OLD}/x86/lstm/expected", "failed", "2.14.1", steps=9.98)
    failed["drift"]["limit_steps"] = 1.0
    page = _Page()
    page.feed(report.drift_svg(report.drift_points([*rows, failed])))

    marks = {(m["data-case"], m["data-producer"], m["data-failed"]): m for m in page.marks}
    bad = marks[("torch_ao/lstm", OLD, "true")]
    assert bad["class"] == "mark failed"
    assert (bad["data-steps"], bad["data-limit"]) == ("9.98", "1")
    cy = {k[:2]: float(m["cy"]) for k, m in marks.items()}
    # log scale: equal ratios are equal distances. 9.98/2 and 2/0.5 are 0.698 and 0.602
    # decades, so the two gaps stand in that ratio (on a linear axis it would be 7.98/1.5)
    upper = cy[("torch_ao/linear", OLD)] - cy[("torch_ao/lstm", OLD)]
    lower = cy[("qbc/conv2d", OLD)] - cy[("torch_ao/linear", OLD)]
    assert upper / lower == pytest.approx(0.698 / 0.602, rel=0.02)
    assert "class='limit'" in report.drift_svg(report.drift_points([failed]))


def test_the_json_report_is_strict_json(rows, empty_store):
    # a bit-exact check has an infinite SQNR: no `Infinity` literal in the output
    exact = row(f"qbc/{OLD}/reference/linear/expected", "passed", "2.6.0", steps=0.0)
    exact["drift"]["min_sqnr_db"] = float("inf")
    text = report.render("json", [*rows, exact], empty_store)
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))


def test_every_report_opens_with_the_matrix(rows, empty_store):
    md = report.render("md", rows, empty_store)
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[:3] == [
        "## Producer × consumer (cells: outcome count over every check)",
        "## Compatibility matrix (cells: outcome count per golden)",
        "## What broke and why (grouped by cause)",
    ]
    page = report.render("html", rows, empty_store)
    assert page.index("<h2>") == page.index("<h2>Producer × consumer")


def committed_results() -> list[Path]:
    return sorted(COMPAT.glob("torch-*.json"), key=lambda p: parse_producer(p.stem + "_qbc-")[0])


def test_each_committed_results_file_comes_from_the_consumer_it_is_named_after():
    files = committed_results()
    assert len(files) >= 3  # oldest working release, the CI release and the newest
    for path in files:
        releases = {r.consumer["torch"].split("+")[0] for r in read_results(path)}
        assert releases == {path.stem.removeprefix("torch-")}, path.name


def test_compatibility_md_is_regenerated_byte_for_byte_from_committed_results(tmp_path):
    # without --results, `qbc report` would run verify over the whole store instead
    assert committed_results()
    out = tmp_path / "compatibility.md"
    args = ["report", "--format", "md", "--store", str(STORE), "-o", str(out)]
    for path in committed_results():
        args += ["--results", str(path)]
    assert qbc_main(args) == 0
    assert out.read_bytes() == (REPO / "docs" / "compatibility.md").read_bytes()


# --- retention policy (harness/data/retention.toml, docs/retention.md) ---------------------


def test_every_golden_manifest_carries_a_utc_date_not_in_the_future():
    now = dt.datetime.now(dt.timezone.utc)
    goldens = iter_goldens(STORE)
    assert goldens
    for g in goldens:
        assert golden_date(g.manifest) <= now, g.id


def test_committed_store_holds_no_producer_beyond_the_retention_policy():
    assert expired(STORE, Retention.load(), dt.datetime.now(dt.timezone.utc)) == []


def test_retention_drops_a_producer_outside_the_newest_minors_once_its_grace_is_over(store_copy):
    # keep 1 minor and 1 day: only the newest torch minor (2.14) is in the window; the others
    # left it the day 2.14's first golden was written, and are expired 1 day later.
    policy = Retention(torch_minors=1, days=1, subjects=(), torch="2.13.0")
    newest_minor = max(minor(g.producer) for g in iter_goldens(store_copy))
    arrived = first_dates(store_copy)[newest_minor]
    assert expired(store_copy, policy, arrived) == []
    dropped = expired(store_copy, policy, arrived + dt.timedelta(days=2))
    assert dropped and all(minor(p) < newest_minor for p in dropped)


def backfill(store: Path, release: str, date: str) -> str:
    """Copy the oldest producer's goldens as producer ``torch-<release>_qbc-0.1.0`` dated
    ``date`` (a producer written late for an older torch release), in place of any producer
    of that release's minor the store already holds."""
    oldest = min((g.producer for g in iter_goldens(store)), key=lambda p: parse_producer(p)[0])
    new = f"torch-{release}_qbc-0.1.0"
    for producer_dir in store.glob("*/torch-*"):
        if producer_dir.is_dir() and minor(producer_dir.name) == minor(new):
            shutil.rmtree(producer_dir)  # the store as it was before that minor's producer
    for subject_dir in store.iterdir():
        if (subject_dir / oldest).is_dir():
            shutil.copytree(subject_dir / oldest, subject_dir / new)
            for path in (subject_dir / new).rglob("manifest.json"):
                data = json.loads(path.read_text())
                data["date"] = date
                data["producer"] = {**data["producer"], "id": new, "torch": release}
                path.write_text(json.dumps(data))
    return new


def test_a_backfilled_producer_takes_its_release_place_and_pushes_no_newer_release_out(
    store_copy,
):
    # A window of 2 minors over 2.6 .. 2.14 keeps 2.13 and 2.14. A 2.8 producer written a
    # year after all of them is older than the window by release: it expires (its grace started
    # when 2.14 arrived), and 2.13, which the newest-written-first order would have expired
    # (2.8 written later), is still kept.
    policy = Retention(torch_minors=2, days=30, subjects=(), torch="2.13.0")
    newest = max(golden_date(g.manifest) for g in iter_goldens(store_copy))
    late = newest + dt.timedelta(days=365)
    backfilled = backfill(store_copy, "2.8.0", late.strftime("%Y-%m-%dT%H:%M:%SZ"))
    dropped = expired(store_copy, policy, late)
    assert backfilled in dropped
    assert all(minor(p) < (2, 13) for p in dropped)


def test_a_backfilled_producer_inside_the_window_is_kept_and_expires_nothing(store_copy):
    # With the default 9 minors, 2.6 .. 2.14 are all in the window: a 2.8 backfill written
    # today expires nothing, however old the other producers' dates are.
    backfilled = backfill(store_copy, "2.8.0", "2026-11-28T00:00:00Z")
    far = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    assert (
        expired(store_copy, Retention(torch_minors=9, days=1, subjects=(), torch="2.13.0"), far)
        == []
    )
    assert backfilled in {g.producer for g in iter_goldens(store_copy)}


def test_this_qbc_version_has_written_its_producer_on_the_pinned_torch_for_every_required_subject():
    # the same answer on every consumer release (nox runs this file on 2.6 .. 2.14): the
    # required producer is named by the pinned release, not by the torch running the test
    policy = Retention.load()
    have = {(g.subject, g.producer) for g in iter_goldens(STORE)}
    required = producer_id(torch_release=policy.torch)
    for subject in policy.subjects:
        assert (subject, required) in have, f"no goldens of {subject} by {required}"


@pytest.fixture(scope="module")
def noxfile() -> Any:
    """The noxfile as a module (its release list and pinned release are plain constants)."""
    pytest.importorskip("nox")
    spec = importlib.util.spec_from_file_location("qbc_noxfile", REPO / "noxfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_store_holds_a_producer_of_every_torch_release_nox_tests(noxfile):
    releases = {parse_producer(g.producer)[0] for g in iter_goldens(STORE)}
    missing = [r for r in noxfile.TORCH_RELEASES if tuple(map(int, r.split("."))) not in releases]
    assert missing == []


def test_the_retention_policy_names_the_torch_release_qbc_pins(noxfile):
    pinned = Retention.load().torch
    assert pinned == noxfile.DEFAULT_TORCH
    assert f"torch=={pinned}" in (REPO / ".ci" / "run").read_text()
    assert f"torch=={pinned}" in (REPO / "README.md").read_text()


def test_coverage_names_the_golden_a_producer_lacks(store_copy):
    # drop the oldest producer's torch_ao/fbgemm/linear golden: its row says "no golden" for
    # that producer and "all" for every other producer in the store, however many there are
    producers = report.store_coverage(store_copy)["producers"]
    assert len(producers) >= 2
    oldest = producers[0]  # ordered by torch release
    shutil.rmtree(store_copy / "torch_ao" / oldest / "fbgemm" / "linear")
    head, body = report._coverage_table(report.store_coverage(store_copy))
    row = next(r for r in body if r[:3] == ["torch_ao", "fbgemm", "linear"])
    cells = dict(zip(head[4:], row[4:], strict=True))
    assert cells == {p: ("no golden" if p == oldest else "all") for p in producers}


def test_consumers_with_and_without_an_isa_class_render_together(rows, empty_store):
    # docs/compat holds results of consumers measured before verify recorded the machine's ISA
    # class next to one that has it: the consumer table says "-" where it is not known
    for r in rows:
        if r["consumer"]["torch"] == "2.14.1+cpu":
            r["consumer"] = {**r["consumer"], "isa": "avx512_vnni"}
    md = report.render("md", rows, empty_store)
    assert "| avx512_vnni |" in md
    assert "| 3.11.7 | - |" in md


def test_compact_results_keep_what_the_report_reads(rows, tmp_path, empty_store):
    # one consumer's rows, compacted and read back, render the same report as the full rows
    mine = [dict(r, duration=0.25) for r in rows if r["consumer"]["torch"] == "2.6.0+cpu"]
    path = tmp_path / "compact.json"
    path.write_text(report.compact_results(mine))
    assert report.render("md", read_results(path), empty_store) == report.render(
        "md", mine, empty_store
    )
    assert "duration" not in path.read_text()


def test_committed_results_are_already_compact():
    for path in committed_results():
        assert report.compact_results(read_results(path)) == path.read_text(), path.name


def warned(row_: dict[str, Any], *messages: str) -> dict[str, Any]:
    return dict(
        row_,
        warnings=[
            {"origin": "torch", "category": "UserWarning", "message": m, "location": "x.py:1"}
            for m in messages
        ],
    )


def test_the_report_says_which_consumer_warned_what_in_how_many_checks(rows, empty_store):
    # consumer 2.14.1 warned "buffer not writable" in two checks; 2.6.0 "old format" in one
    rows = [
        warned(rows[0], "buffer not writable"),
        warned(rows[1], "buffer not writable"),
        warned(rows[5], "old format"),
        *rows[2:5],
        rows[6],
    ]
    summary = report.warning_summary(rows)
    assert [(w["consumer"], w["message"], len(w["checks"])) for w in summary] == [
        ("torch-2.6.0_qbc-0.1.0", "old format", 1),
        ("torch-2.14.1_qbc-0.1.0", "buffer not writable", 2),
    ]
    md = report.render("md", rows, empty_store)
    assert "| torch-2.14.1_qbc-0.1.0 | torch | UserWarning | buffer not writable | 2 |" in md


def test_compact_results_store_each_distinct_warning_once(rows, tmp_path):
    mine = [warned(r, "a", "b") for r in rows if r["consumer"]["torch"] == "2.14.1+cpu"]
    text = report.compact_results(mine)
    assert text.count('"message":"a"') == 1
    path = tmp_path / "compact.json"
    path.write_text(text)
    back = read_results(path)
    assert [sorted(w["message"] for w in r.warnings) for r in back] == [["a", "b"]] * 3


def test_producer_by_consumer_counts_every_check_of_a_producer_on_each_consumer(rows):
    # torch_ao/NEW on 2.6.0: one known break (exported) and one failure (scripted); on 2.14.1
    # its one state_dict check passed; OLD has two passes on 2.14.1 and one on 2.6.0
    head, body = report.producer_consumer(rows)
    assert head == [
        "subject",
        "producer ↓ / consumer →",
        consumer("2.6.0")["id"],
        consumer("2.14.1")["id"],
    ]
    assert body == [
        ["qbc", OLD, "ok 1", "-"],
        ["torch_ao", OLD, "ok 1", "ok 2"],
        ["torch_ao", NEW, "FAIL 1 xfail 1", "ok 1"],
    ]
