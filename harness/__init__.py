"""qbc: backward-compatibility and serialization test harness for quantized PyTorch models."""

from harness.quant.decomposed import ensure_registered as _ensure_decomposed_ops

__version__ = "0.1.0"

# Exported goldens use quantized_decomposed ops; registering them here means `import harness`
# is all a consumer needs before torch.export.load.
_ensure_decomposed_ops()
