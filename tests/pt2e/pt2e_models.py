"""Tiny float models for the pt2e tests (export is the slow part, so shapes are minimal)."""

from __future__ import annotations

import torch


class LinearModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class ConvModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvWithBNRelu(torch.nn.Module):
    def __init__(
        self, relu: bool = True, transpose: bool = False, channels: int = 3, groups: int = 1
    ) -> None:
        super().__init__()
        conv = torch.nn.ConvTranspose2d if transpose else torch.nn.Conv2d
        self.conv = conv(3, channels, 3) if groups == 1 else conv(4, channels, 3, groups=groups)
        self.bn = torch.nn.BatchNorm2d(channels)
        self.relu = torch.nn.ReLU() if relu else torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class ConvLinearWPermute(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.linear1 = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear1(torch.permute(self.conv(x), (0, 2, 3, 1)))


class ConvBnReLU2dAndLinearReLU(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_bn_relu = ConvWithBNRelu(relu=True)
        self.linear = torch.nn.Linear(3, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.permute(self.conv_bn_relu(x), (0, 2, 3, 1)))


class EmbeddingModule(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(num_embeddings=10, embedding_dim=12)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.emb(indices)


class ConvBnReluPoolLinear(torch.nn.Module):
    """Conv-BN-ReLU-AvgPool-Flatten-Linear, the classifier head of issue #14 item 8:
    [N, 3, 8, 8] -> conv 3x3 pad 1 (8 ch) -> bn -> relu -> pool 2 -> [N, 128] -> linear 10."""

    def __init__(self, pool: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.relu = torch.nn.ReLU()
        self.pool = torch.nn.AvgPool2d(2) if pool is None else pool
        self.linear = torch.nn.Linear(8 * 4 * 4, 10)
        # statistics of a trained network, not the identity of a fresh batch norm
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.pool(self.relu(self.bn(self.conv(x)))), 1))


class Conv2dThenConv1d(torch.nn.Module):
    """conv2d -> squeeze -> conv1d: three ops (handles 1, 2, 3), the seed's
    reference model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d = torch.nn.Conv2d(3, 3, 3)
        self.conv1d = torch.nn.Conv1d(3, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1d(self.conv2d(x).squeeze(0))

    @staticmethod
    def example_inputs() -> tuple[torch.Tensor, ...]:
        return (torch.randn(1, 3, 5, 5),)


def export(model: torch.nn.Module, example_inputs: tuple) -> torch.fx.GraphModule:
    return torch.export.export(model, example_inputs).module()


def quantize(
    model: torch.nn.Module,
    quantizer: object,
    example_inputs: tuple,
    is_qat: bool = False,
    fold_quantize: bool = True,
) -> torch.fx.GraphModule:
    """export -> prepare -> one calibration pass -> convert."""
    from harness.quant.pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

    gm = export(model, example_inputs)
    gm = (prepare_qat_pt2e if is_qat else prepare_pt2e)(gm, quantizer)
    gm(*example_inputs)
    return convert_pt2e(gm, fold_quantize=fold_quantize)


def symmetric(is_per_channel: bool = False, is_dynamic: bool = False, is_qat: bool = False):
    from harness.quant.pt2e import SymmetricQuantizer, get_symmetric_quantization_config

    return SymmetricQuantizer().set_global(
        get_symmetric_quantization_config(
            is_per_channel=is_per_channel, is_dynamic=is_dynamic, is_qat=is_qat
        )
    )
