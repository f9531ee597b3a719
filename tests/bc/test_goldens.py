"""The backward-compatibility runner over the committed golden store (every producer).

One test per (golden, format), ids ``<subject>/<producer>/<engine>/<case>/<format>``; the checks
are documented in harness/verify.py and parametrized by the ``qbc`` pytest plugin.
"""

from harness.verify import test_golden

__all__ = ["test_golden"]
