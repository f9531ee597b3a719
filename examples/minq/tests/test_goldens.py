"""minq's CI gate: every golden in golden/ (pyproject names it) loads and reproduces today."""

from harness.verify import test_golden

__all__ = ["test_golden"]
