"""Entry points of the export-based flow: prepare (PTQ or QAT), calibrate, convert.

    model = torch.export.export(float_model, example_inputs).module()
    model = prepare_pt2e(model, quantizer)       # or prepare_qat_pt2e, then train
    model(*calibration_inputs)
    model = convert_pt2e(model)                  # quantize/dequantize ops, int8 weights

The model is transformed in place and returned; ``.eval()`` / ``.train()`` stay refused
(use :func:`move_exported_model_to_eval`).
"""

from __future__ import annotations

from torch.fx import GraphModule

from harness.quant.pt2e import fold_bn
from harness.quant.pt2e.constant_fold import fold_quantize as _fold_constants
from harness.quant.pt2e.convert import replace_observers
from harness.quant.pt2e.export_utils import disallow_eval_train, model_is_exported
from harness.quant.pt2e.prepare import insert_observers
from harness.quant.pt2e.quantizer import ANNOTATION_KEY, Quantizer


def _check_model(fn: str, model: object) -> None:
    if not model_is_exported(model):  # type: ignore[arg-type]
        raise TypeError(
            f"{fn}: model must be an exported graph, torch.export.export(model, "
            f"example_inputs).module(); got {type(model).__module__}.{type(model).__qualname__}"
            + (
                " (a torch.fx.symbolic_trace graph has no export metadata)"
                if isinstance(model, GraphModule)
                else ""
            )
        )


def _check_quantizer(fn: str, quantizer: object) -> None:
    if not isinstance(quantizer, Quantizer):
        raise TypeError(
            f"{fn}: quantizer must be a harness.quant.pt2e.Quantizer, got "
            f"{type(quantizer).__qualname__}"
        )


def _prepare(model: GraphModule, quantizer: Quantizer, is_qat: bool, fn: str) -> GraphModule:
    _check_model(fn, model)
    _check_quantizer(fn, quantizer)
    if not is_qat:
        # Inference-mode batch norms are folded first, so the weights that get observed are
        # the folded ones.
        fold_bn.fold_conv_bn_eval(model)
    model = quantizer.transform_for_annotation(model)
    quantizer.annotate(model)
    quantizer.validate(model)
    if is_qat:
        fold_bn.prepare_conv_bn_qat(model)
    insert_observers(model, is_qat)
    # Quantizers may edit nodes in place (transform_for_annotation); regenerate the code always.
    model.recompile()
    return disallow_eval_train(model)


def prepare_pt2e(model: GraphModule, quantizer: Quantizer) -> GraphModule:
    """Annotate ``model`` with ``quantizer`` and insert observers for post-training calibration."""
    return _prepare(model, quantizer, False, "prepare_pt2e")


def prepare_qat_pt2e(model: GraphModule, quantizer: Quantizer) -> GraphModule:
    """Like :func:`prepare_pt2e` but with fake-quant modules (and conv-bn kept trainable) for
    quantization-aware training."""
    return _prepare(model, quantizer, True, "prepare_qat_pt2e")


def convert_pt2e(model: GraphModule, fold_quantize: bool = True) -> GraphModule:
    """Replace observers by quantize/dequantize ops; with ``fold_quantize`` the weights become
    integer constants (only their dequantize remains in the graph)."""
    _check_model("convert_pt2e", model)
    fold_bn.fold_conv_bn_qat(model)
    replace_observers(model)
    if fold_quantize:
        _fold_constants(model)
    for node in model.graph.nodes:
        node.meta.pop(ANNOTATION_KEY, None)
    model.recompile()
    return disallow_eval_train(model)
