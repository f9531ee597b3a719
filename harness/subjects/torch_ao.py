"""The ``torch_ao`` subject: PyTorch's own eager/graph quantization (``torch.ao``).

Engines are torch's quantized CPU backends, selected through ``torch.backends.quantized.engine``.
Every call into torch.ao, quantized dtypes or TorchScript happens inside :meth:`use_engine`, which
also expects torch's deprecation warnings (torch 2.13 deprecates all three).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from harness import compat
from harness.cases import Case


class TorchAOSubject:
    name = "torch_ao"
    _ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")

    def engines(self) -> tuple[str, ...]:
        return self._ENGINES

    def unavailable_reason(self, engine: str) -> str | None:
        if not compat.has_torch_ao_quantized_modules():
            return f"torch.ao.nn.quantized is gone in torch {torch.__version__}"
        if not compat.has_quantized_engines():
            return f"torch {torch.__version__} ships no quantized CPU engines"
        if engine not in torch.backends.quantized.supported_engines:
            return f"engine {engine!r} is not supported by torch {torch.__version__} here"
        return None

    @contextlib.contextmanager
    def use_engine(self, engine: str) -> Iterator[None]:
        with compat.expected_torch_deprecations():
            previous = torch.backends.quantized.engine
            torch.backends.quantized.engine = engine
            try:
                yield
            finally:
                torch.backends.quantized.engine = previous

    def cases(self) -> Sequence[Case]:
        from harness.cases.torch_ao import CASES

        return CASES


SUBJECT = TorchAOSubject()
