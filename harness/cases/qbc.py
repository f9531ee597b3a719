"""Case table of the ``qbc`` subject (``harness.quant``).

Rows are added as the implementation's modules land; a case whose module is missing is simply
not in the table (the coverage gate then neither expects nor accepts goldens for it).
"""

from __future__ import annotations

from harness.cases import Case

CASES: list[Case] = []
