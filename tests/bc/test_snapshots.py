"""Today's graph signatures as syrupy snapshots (tests/bc/__snapshots__/).

One snapshot per (subject, case) with a ``graph`` format, taken on the case's first engine that
runs here. These are *today's* signatures: ``pytest tests/bc --snapshot-update`` rewrites only
this snapshot file; the signatures stored in golden/ belong to their producers and are never
rewritten (the golden checks compare today's signature against each of them separately).
"""

from __future__ import annotations

import pytest

from harness.cases import BuildContext, Case
from harness.subjects import all_cases, get_subject


def _params() -> list:
    params = []
    for case in all_cases(builtin=True):  # an installed plug-in's cases are not qbc's to snapshot
        if "graph" not in case.formats:
            continue
        subject = get_subject(case.subject)
        engines = [
            e
            for e in (case.engines or subject.engines())
            if "graph" in case.formats_for(e) and subject.unavailable_reason(e) is None
        ]
        if engines:
            params.append(
                pytest.param(case, engines[0], id=f"{case.subject}/{engines[0]}/{case.name}")
            )
    return params


@pytest.mark.parametrize(("case", "engine"), _params())
def test_graph_signature_matches_snapshot(case: Case, engine: str, snapshot) -> None:
    with get_subject(case.subject).use_engine(engine):
        built = case.builder(BuildContext(case, engine))
        assert built.get("signature") == snapshot
