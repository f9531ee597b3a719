"""The ``qbc`` subject: this project's own quantization implementation (``harness.quant``).

Engines come from ``harness.quant.engines`` (reference, int_mm, fbgemm, x86, qnnpack, onednn);
quantized values are plain integer tensors, so its state_dicts are safetensors-compatible. The
case table lives in ``harness/cases/qbc.py`` and grows as the implementation lands.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Sequence

from harness import compat
from harness.cases import Case

ENGINE_NAMES = ("reference", "int_mm", "fbgemm", "x86", "qnnpack", "onednn")


class QbcSubject:
    name = "qbc"

    def engines(self) -> tuple[str, ...]:
        return ENGINE_NAMES

    def unavailable_reason(self, engine: str) -> str | None:
        if importlib.util.find_spec("harness.quant.engines") is None:
            return "harness.quant.engines is not built yet"
        from harness.quant import engines

        try:
            engines.get_engine(engine)
        except Exception as exc:  # EngineUnavailable names engine and torch release
            return str(exc)
        return None

    @contextlib.contextmanager
    def use_engine(self, engine: str) -> Iterator[None]:
        from harness.quant import engines

        # Native engines call torch's quantized kernels, which warn on torch 2.13.
        with compat.expected_torch_deprecations(), engines.use_engine(engine):
            yield

    def cases(self) -> Sequence[Case]:
        from harness.cases.qbc import CASES

        return CASES


SUBJECT = QbcSubject()
