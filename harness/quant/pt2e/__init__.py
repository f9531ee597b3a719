"""qbc's export-based quantization flow (torch 2.13 no longer ships ``torch.ao...pt2e``).

Quantizer API in :mod:`.quantizer`, default quantizers in :mod:`.symmetric_quantizer`,
:mod:`.embedding_quantizer`, :mod:`.composable_quantizer`; passes in :mod:`.prepare`,
:mod:`.fold_bn`, :mod:`.convert`, :mod:`.constant_fold`; entry points in :mod:`.quantize_pt2e`.
"""

from harness.quant.pt2e.annotators import OP_TO_ANNOTATOR
from harness.quant.pt2e.composable_quantizer import ComposableQuantizer
from harness.quant.pt2e.convert import UncalibratedObserverWarning
from harness.quant.pt2e.embedding_quantizer import EmbeddingQuantizer
from harness.quant.pt2e.export_utils import (
    allow_exported_model_train_eval,
    model_is_exported,
    move_exported_model_to_eval,
    move_exported_model_to_train,
)
from harness.quant.pt2e.observer_factory import DerivedObserver
from harness.quant.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from harness.quant.pt2e.quantizer import (
    ANNOTATION_KEY,
    DerivedQuantizationSpec,
    EdgeOrNode,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationConfig,
    QuantizationSpec,
    QuantizationSpecBase,
    Quantizer,
    SharedQuantizationSpec,
)
from harness.quant.pt2e.symmetric_quantizer import (
    SymmetricQuantizer,
    get_symmetric_quantization_config,
    get_x86_inductor_quantization_config,
)

__all__ = [
    "ANNOTATION_KEY",
    "OP_TO_ANNOTATOR",
    "ComposableQuantizer",
    "DerivedObserver",
    "DerivedQuantizationSpec",
    "EdgeOrNode",
    "EmbeddingQuantizer",
    "FixedQParamsQuantizationSpec",
    "QuantizationAnnotation",
    "QuantizationConfig",
    "QuantizationSpec",
    "QuantizationSpecBase",
    "Quantizer",
    "SharedQuantizationSpec",
    "SymmetricQuantizer",
    "UncalibratedObserverWarning",
    "allow_exported_model_train_eval",
    "convert_pt2e",
    "get_symmetric_quantization_config",
    "get_x86_inductor_quantization_config",
    "model_is_exported",
    "move_exported_model_to_eval",
    "move_exported_model_to_train",
    "prepare_pt2e",
    "prepare_qat_pt2e",
]
