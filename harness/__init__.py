"""qbc: backward-compatibility and serialization test harness for quantized PyTorch models.

Importing :mod:`harness` imports nothing else, torch included, but for :mod:`harness.isa`
(torch-free): the pytest plugin (:mod:`harness.pytest_plugin`) and the ``qbc`` command start
from here, and a pytest run or an xdist controller that never runs a check should not pay for
torch. :mod:`harness.quant` registers the ``quantized_decomposed`` ops; every reader of exported
goldens registers them itself before ``torch.export.load``.

The run-wide ISA cap (``QBC_ISA_CAP``, :func:`harness.isa.apply_run_cap`) is applied here: the
kernel libraries read their caps when torch starts, so they must be in the environment before
that, in this process and in every child (xdist workers, harness.isolation's workers).
"""

from harness import isa as _isa

__version__ = "0.2.0"

_isa.apply_run_cap()
