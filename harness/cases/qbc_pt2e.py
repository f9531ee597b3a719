"""Export-based (pt2e) cases of the ``qbc`` subject: ``harness.quant.pt2e`` end to end.

Every row is one float model + one quantizer, run through the same flow:

    float model (seeded) --torch.export--> GraphModule
        -> generate_numeric_debug_handle      (handles name the *float* ops)
        -> prepare_pt2e / prepare_qat_pt2e    (observers / fake-quants)
        -> calibrate on the stored inputs      (PTQ: one pass; QAT: a few SGD steps, then eval)
        -> convert_pt2e                        (quantized_decomposed q/dq ops, int8 weights)
        -> torch.export.export                 (the ``exported`` .pt2 golden)

Formats:

- ``state_dict`` stores the *float* model (the flow's input). Its load check loads those past
  float weights into today's float module and re-runs today's whole flow on the stored inputs,
  so it answers "does today's quantizer turn yesterday's float model into the same numbers?";
- ``exported`` is the quantized program itself (reloaded and run, no flow);
- ``expected`` (reproduce check) re-runs the flow on the seed-built float model (the same
  weights as ``state_dict``, bit for bit) and the stored inputs; ``graph`` compares today's
  exported signature (op sequence, q/dq pattern) with the stored one;
- ``intermediates`` are every debug handle's output of the quantized program, so a numeric
  failure names the first divergent op (harness.verify.first_divergence).

The graph uses only ``quantized_decomposed`` and aten ops, so it does not depend on a kernel
engine: one golden per case, on ``reference``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.cases import BuildContext, Built, Case
from harness.cases import architectures as arch
from harness.graphsig import signature

ENGINE = "reference"
FORMATS = ("input", "state_dict", "exported", "expected", "graph", "intermediates")
#: QAT: SGD steps on the stored inputs before convert (loss: mean square of the output, which
#: only needs to be deterministic and move the weights and batch-norm statistics a little)
QAT_STEPS = 2
QAT_LR = 0.01


# --------------------------------------------------------------------------------------------
# Float models (tiny: export dominates the cost)
# --------------------------------------------------------------------------------------------


class Conv2dThenConv1d(nn.Module):
    """[1, 3, 5, 5] -> conv2d -> [1, 3, 3, 3] -> squeeze(0) -> conv1d -> [3, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(3, 3, 3)
        self.conv1d = nn.Conv1d(3, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1d(self.conv2d(x).squeeze(0))


class TwoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear1 = nn.Linear(8, 16, bias=False)
        self.linear2 = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.linear1(x))


class ConvLinearPermute(nn.Module):
    """Conv2d, channels moved last (NCHW -> NHWC), then a Linear over the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.permute(self.conv(x), (0, 2, 3, 1)))


class EmbeddingLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.linear = nn.Linear(8, 4)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.linear(self.emb(indices))


class ConvBnReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _with_batch_norm_statistics(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """``factory`` with every BatchNorm given random affine parameters and running statistics
    (from the caller's seeded RNG): a freshly built BatchNorm is the identity in eval, and
    folding an identity would not exercise conv-bn folding."""

    def make() -> nn.Module:
        model = factory()
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            n = bn.num_features
            with torch.no_grad():
                bn.weight.copy_(0.5 + torch.rand(n))
                bn.bias.copy_(0.2 * torch.randn(n))
                bn.running_mean.copy_(0.2 * torch.randn(n))
                bn.running_var.copy_(0.5 + torch.rand(n))
        return model

    return make


# --------------------------------------------------------------------------------------------
# The flow
# --------------------------------------------------------------------------------------------


def _symmetric(**config: bool) -> Callable[[], Any]:
    def make() -> Any:
        from harness.quant.pt2e import SymmetricQuantizer, get_symmetric_quantization_config

        return SymmetricQuantizer().set_global(get_symmetric_quantization_config(**config))

    return make


def _embedding_then_static() -> Any:
    """Embedding rows uint8 weight-only (EmbeddingQuantizer), the rest int8 per-tensor static."""
    from harness.quant.pt2e import ComposableQuantizer, EmbeddingQuantizer

    return ComposableQuantizer([EmbeddingQuantizer(), _symmetric()()])


@dataclass(frozen=True)
class Recipe:
    """How one case quantizes: its float model, its quantizer, PTQ or QAT."""

    make_float: Callable[[], nn.Module]
    make_quantizer: Callable[[], Any]
    qat: bool = False


def quantize(
    float_model: nn.Module, recipe: Recipe, inputs: tuple[Any, ...]
) -> torch.fx.GraphModule:
    """The export-based flow of the module docstring; ``float_model`` itself is not modified."""
    from harness.compat import export_module
    from harness.quant.pt2e import (
        convert_pt2e,
        move_exported_model_to_eval,
        prepare_pt2e,
        prepare_qat_pt2e,
    )
    from harness.quant.pt2e.numeric_debugger import generate_numeric_debug_handle

    model = copy.deepcopy(float_model).train(recipe.qat)
    gm = export_module(model, inputs)
    # On the float graph, before prepare: each handle then names a float op, and convert
    # carries it to the quantized op's dequantize (the intermediates are keyed by it).
    generate_numeric_debug_handle(gm)
    if recipe.qat:
        gm = prepare_qat_pt2e(gm, recipe.make_quantizer())
        optimizer = torch.optim.SGD(gm.parameters(), lr=QAT_LR)
        with torch.enable_grad():  # also when a caller runs the flow under no_grad
            for _ in range(QAT_STEPS):
                optimizer.zero_grad()
                gm(*inputs).pow(2).mean().backward()
                optimizer.step()
        move_exported_model_to_eval(gm)
    else:
        gm = prepare_pt2e(gm, recipe.make_quantizer())
        with torch.no_grad():
            gm(*inputs)
    return convert_pt2e(gm)


class Pt2eFlow(nn.Module):
    """A float model whose forward is "quantize me with today's flow, then run": the state_dict
    golden holds the float weights, and loading it re-runs the flow on them (module doc)."""

    def __init__(self, float_model: nn.Module, recipe: Recipe) -> None:
        super().__init__()
        self.float_model = float_model
        self.recipe = recipe

    def forward(self, *inputs: Any) -> Any:
        with torch.no_grad():
            return quantize(self.float_model, self.recipe, inputs)(*inputs)


def _seeded(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return factory()


#: node meta that torch.export serializes but that is not part of the program: ``from_node``
#: records ``id()`` of intermediate graphs (a memory address: the .pt2 bytes would differ on
#: every generation and ``regen_goldens.py --check`` would report drift), ``stack_trace`` the
#: producer's absolute source paths. Debug handles live in ``meta["custom"]`` and are kept.
_PROVENANCE_META = ("from_node", "stack_trace")


def _drop_provenance(program: torch.export.ExportedProgram) -> None:
    for node in program.graph.nodes:
        for key in _PROVENANCE_META:
            node.meta.pop(key, None)


def pt2e_builder(recipe: Recipe, name: str) -> Callable[[BuildContext], Built]:
    """Builder of one pt2e row (see module docstring)."""

    def build(ctx: BuildContext) -> Built:
        float_model = _seeded(ctx.case.seed, recipe.make_float)
        inputs = ctx.make_inputs()
        gm = quantize(float_model, recipe, inputs)
        with torch.no_grad():
            expected = gm(*inputs)
            exported = torch.export.export(gm, inputs, strict=False)
        _drop_provenance(exported)
        built = Built(
            model=Pt2eFlow(float_model, recipe),
            inputs=inputs,
            expected=expected,
            # any weights do: the load check overwrites them with the stored ones
            fresh=lambda: Pt2eFlow(recipe.make_float(), recipe),
            exported=exported,
            float_model=float_model,
        )
        built.signature = lambda: signature(exported)
        return built

    build.__qualname__ = f"pt2e_builder[{name}]"
    return build


def _indices(shapes: tuple[tuple[int, ...], ...], gen: torch.Generator) -> tuple[Any, ...]:
    return (torch.randint(0, 10, shapes[0], generator=gen),)


def _randn(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


#: the real-architecture rows' recipes (also what bench/arch_sqnr.py compares with torchao)
ARCHITECTURES: dict[str, Recipe] = {
    "pt2e_resnet18": Recipe(
        _with_batch_norm_statistics(arch.resnet18), _symmetric(is_per_channel=True)
    ),
    "pt2e_mobilenet_v3_small": Recipe(
        _with_batch_norm_statistics(arch.mobilenet_v3_small), _symmetric(is_per_channel=True)
    ),
    "pt2e_transformer_encoder_layer": Recipe(
        arch.transformer_encoder_layer, _symmetric(is_per_channel=True)
    ),
}


def seeded_float_model(case: Case, recipe: Recipe) -> nn.Module:
    """The float model a row's builder starts from (seeded with the row's seed)."""
    return _seeded(case.seed, recipe.make_float)


def _case(
    name: str,
    recipe: Recipe,
    shape: tuple[int, ...],
    description: str,
    **kw: Any,
) -> Case:
    kw.setdefault("make_input", _randn)
    return Case(
        "qbc",
        name,
        pt2e_builder(recipe, name),
        (shape,),
        FORMATS,
        engines=(ENGINE,),
        seed=kw.pop("seed", 0),
        calibration=kw.pop(
            "calibration", "export, debug handles, prepare_pt2e, one pass on the stored inputs"
        ),
        description=description + "; graph is engine-independent (quantized_decomposed ops)",
        **kw,
    )


CASES: list[Case] = [
    _case(
        "pt2e_conv2d_conv1d",
        Recipe(Conv2dThenConv1d, _symmetric(is_per_channel=False)),
        (1, 3, 5, 5),
        "Conv2d -> squeeze -> Conv1d, int8 per-tensor symmetric static",
    ),
    _case(
        "pt2e_two_linear",
        Recipe(TwoLinear, _symmetric(is_per_channel=True)),
        (2, 8),
        "Linear(8, 16, no bias) -> Linear(16, 8), int8 per-channel weights, static",
    ),
    _case(
        "pt2e_conv_linear_permute",
        Recipe(ConvLinearPermute, _symmetric(is_per_channel=False)),
        (1, 3, 5, 5),
        "Conv2d -> permute NCHW->NHWC -> Linear, int8 per-tensor static",
    ),
    _case(
        "pt2e_embedding",
        Recipe(EmbeddingLinear, _embedding_then_static),
        (6,),
        "Embedding(10, 8) uint8 rows with float qparams (EmbeddingQuantizer) -> Linear int8 "
        "static (ComposableQuantizer)",
        make_inputs=_indices,
    ),
    _case(
        "pt2e_grouped_conv",
        Recipe(lambda: nn.Conv2d(4, 4, 3, groups=2), _symmetric(is_per_channel=True)),
        (1, 4, 5, 5),
        "Conv2d(4, 4, 3, groups=2), int8 per-channel weights, static",
    ),
    _case(
        "pt2e_linear_dynamic",
        Recipe(lambda: nn.Linear(8, 4), _symmetric(is_per_channel=True, is_dynamic=True)),
        (2, 8),
        "Linear(8, 4), int8 per-channel weights, dynamic activation qparams",
        calibration="export, debug handles, prepare_pt2e, one pass (no activation statistics)",
    ),
    _case(
        "pt2e_conv_bn_qat",
        Recipe(ConvBnReLU, _symmetric(is_per_channel=True, is_qat=True), qat=True),
        (2, 3, 5, 5),
        "Conv2d -> BatchNorm2d -> ReLU, QAT (per-channel fake-quant), batch norm folded at convert",
        calibration=f"export (train), debug handles, prepare_qat_pt2e, {QAT_STEPS} SGD steps "
        f"(lr {QAT_LR}) on the stored inputs, eval, convert",
    ),
    # Real architectures (harness/cases/architectures.py): per-channel PTQ of the whole model.
    _case(
        "pt2e_resnet18",
        ARCHITECTURES["pt2e_resnet18"],
        (1, 3, 64, 64),
        "ResNet-18 (torchvision's structure, widths 4-32, 10 classes, seeded weights and "
        "batch-norm statistics), int8 per-channel weights, static",
    ),
    _case(
        "pt2e_mobilenet_v3_small",
        ARCHITECTURES["pt2e_mobilenet_v3_small"],
        (1, 3, 64, 64),
        "MobileNetV3-Small (torchvision's block table at width 0.25, its first five blocks: "
        "depthwise convs, hardswish, squeeze-excite, residual adds; seeded weights and "
        "batch-norm statistics), int8 per-channel weights, static",
    ),
    _case(
        "pt2e_transformer_encoder_layer",
        ARCHITECTURES["pt2e_transformer_encoder_layer"],
        (1, 16, 64),
        "nn.TransformerEncoderLayer(d_model 64, 4 heads, feed-forward 128, batch first) on 16 "
        "tokens, int8 per-channel weights, static",
    ),
]
