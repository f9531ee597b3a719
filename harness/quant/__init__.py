"""qbc's quantization implementation (subject ``qbc``): plain integer tensors, explicit qparams.

Importing it registers the ``quantized_decomposed`` ops (torch's registration where this torch
has one, an identical schema of qbc's otherwise: :mod:`harness.quant.decomposed`), so
``import harness.quant`` is all a consumer needs before ``torch.export.load`` of an exported
quantized program.
"""

from harness.quant.decomposed import ensure_registered as _ensure_decomposed_ops

_ensure_decomposed_ops()
