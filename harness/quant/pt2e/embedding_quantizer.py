"""Weight-only quantization of embedding tables.

Each row (one embedding vector) gets its own scale and a *float* zero point, uint8 in
``[0, 255]`` (``per_channel_affine_float_qparams`` along axis 0): with ``lo``/``hi`` the row's min
and max, ``s = (hi - lo) / 255`` and ``z = -lo / s``, so the row's range maps exactly onto the
256 levels without having to include 0 (embedding rows rarely straddle it symmetrically).
"""

from __future__ import annotations

import functools

import torch
from torch.fx import GraphModule

from harness.quant import observers
from harness.quant.pt2e.annotators import annotate_embedding
from harness.quant.pt2e.quantizer import QuantizationConfig, QuantizationSpec, Quantizer


@functools.cache
def get_embedding_operators_config() -> QuantizationConfig:
    weight = QuantizationSpec(
        dtype=torch.uint8,
        quant_min=0,
        quant_max=255,
        qscheme=torch.per_channel_affine_float_qparams,
        ch_axis=0,
        observer_or_fake_quant_ctr=observers.PerChannelMinMaxObserver,
    )
    return QuantizationConfig(
        input_activation=None, output_activation=None, weight=weight, bias=None
    )


class EmbeddingQuantizer(Quantizer):
    """Quantizes the weight of every ``aten.embedding`` to uint8 rows with float qparams."""

    def annotate(self, model: GraphModule) -> GraphModule:
        annotate_embedding(model, get_embedding_operators_config())
        return model

    def validate(self, model: GraphModule) -> None:
        return None
