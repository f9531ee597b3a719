"""The backward-compatibility runner over the committed golden store.

One test per (golden, format), ids ``<subject>/<producer>/<engine>/<case>/<format>``; the checks
are documented in harness/verify.py and parametrized by the ``qbc`` pytest plugin.

Scope: the *span* of the store (``qbc_producers = "span"`` in pyproject.toml, harness/scope.py):
per subject, today's producer, the oldest and the newest past producer, and the newest producer of
each qbc version. Each producer adds ~1000 checks and the store keeps nine torch minors, so the
whole store would outgrow the test command's 10-minute budget, while a change to today's code is
caught by both ends of the torch range and every qbc version. Every producer is checked by
``qbc verify`` (CI's step after the tests) and by ``pytest --qbc-producers all``.
"""

from harness.verify import test_golden

__all__ = ["test_golden"]
