"""qbc: backward-compatibility and serialization test harness for quantized PyTorch models.

Importing :mod:`harness` imports nothing else, torch included: the pytest plugin
(:mod:`harness.pytest_plugin`) and the ``qbc`` command start from here, and a pytest run or an
xdist controller that never runs a check should not pay for torch. :mod:`harness.quant`
registers the ``quantized_decomposed`` ops; every reader of exported goldens registers them
itself before ``torch.export.load``.
"""

__version__ = "0.1.0"
