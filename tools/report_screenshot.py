#!/usr/bin/env python
"""Render the HTML report in headless Chromium and save a screenshot (PNG).

    qbc verify --json /tmp/results.json            # or any `qbc verify --json` results
    python tools/report_screenshot.py /tmp/results.json -o report.png [--store golden]

Needs Chromium (Debian: ``apt-get install -y chromium``). The page is the one ``qbc report
--format html`` writes: the producer x consumer table and the matrix first, what broke grouped by
cause, then the drift plot (log scale, failed checks in red against their policy limit).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.report import render
from harness.results import read_results

#: what a headless Chromium needs on a machine without a display or network (as root: no
#: sandbox; no background requests to Google's hosts, which this machine refuses)
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)  # fmt: skip


def screenshot(html: Path, png: Path, width: int, height: int) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("report_screenshot: no chromium on PATH (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="qbc-chromium-") as profile:
        subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             f"--window-size={width},{height}", f"--screenshot={png}", html.as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="results JSON files (one per consumer)")
    p.add_argument("--store", default="golden")
    p.add_argument("-o", "--output", default="report.png")
    p.add_argument("--width", type=int, default=1700)
    p.add_argument("--height", type=int, default=2600)
    args = p.parse_args(argv)
    results = [r for path in args.results for r in read_results(Path(path))]
    with tempfile.TemporaryDirectory(prefix="qbc-report-") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(render("html", results, Path(args.store)))
        screenshot(page, Path(args.output).resolve(), args.width, args.height)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
