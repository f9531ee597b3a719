"""Real architectures for the export-based cases, narrowed to keep a golden under 1 MB.

torchvision cannot be imported beside the pinned torch wheel, so ResNet-18 and
MobileNetV3-Small are written out here with the same structure and op mix as torchvision's
definitions; only the channel widths (and the classifier) are narrowed:

- :func:`resnet18`: stem conv 7x7/2 -> BN -> ReLU -> max-pool 3x3/2, four stages of two
  BasicBlocks (conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the identity or a strided
  conv1x1 -> BN downsample, add, ReLU), global average pool, flatten, linear. Stage widths
  ``w, 2w, 4w, 8w`` with ``w = 4`` (torchvision: 64), so the golden stays under 1 MB.
- :func:`mobilenet_v3_small`: stem conv 3x3/2 -> BN -> hardswish, inverted residual blocks
  (expand conv1x1 -> BN -> act, depthwise conv kxk -> BN -> act, optional squeeze-excite:
  avg-pool -> conv1x1 -> ReLU -> conv1x1 -> hardsigmoid -> mul, project conv1x1 -> BN,
  residual add when the shape is kept), last conv1x1 -> BN -> hardswish, avg-pool, linear ->
  hardswish -> dropout -> linear. torchvision's block table with a width multiplier of 0.25
  (channels rounded to multiples of 8, as torchvision's width multiplier does), cut to its first
  five blocks: each kind of block is still there (without and with expansion, ReLU and
  hardswish, with and without squeeze-excite, 3x3 and 5x5 depthwise, strides 2 and 1, with and
  without the residual add). All eleven blocks make a 414-node graph whose ``.pt2`` alone is
  1 MB (its JSON grows with the node count, not with the widths).
- :func:`transformer_encoder_layer`: ``torch.nn.TransformerEncoderLayer`` itself (d_model 64,
  4 heads): multi-head attention (in-projection, scaled dot-product, out-projection), residual
  adds, layer norms and a ReLU feed-forward of width 128 (default 2048).
"""

from __future__ import annotations

from torch import nn


def _divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% below ``value``
    (the rounding torchvision applies to MobileNet widths)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# ------------------------------------------------------------------------------- ResNet-18


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):  # type: ignore[no-untyped-def]
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, width: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, inplanes = [], width
        for i in range(4):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            stages.append(
                nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes))
            )
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18() -> nn.Module:
    return ResNet18()


# ------------------------------------------------------------------------ MobileNetV3-Small


def _conv_bn_act(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type | None = None
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=0.001, momentum=0.01),
    ]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):  # type: ignore[no-untyped-def]
        scale = self.scale_activation(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidual(nn.Module):
    def __init__(
        self, cin: int, kernel: int, expanded: int, cout: int, se: bool, act: type, stride: int
    ) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(_conv_bn_act(cin, expanded, 1, act=act))
        layers.append(_conv_bn_act(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se:
            layers.append(SqueezeExcitation(expanded, _divisible(expanded // 4)))
        layers.append(_conv_bn_act(expanded, cout, 1))
        self.block = nn.Sequential(*layers)

    def forward(self, x):  # type: ignore[no-untyped-def]
        out = self.block(x)
        return out + x if self.use_res_connect else out


#: torchvision's MobileNetV3-Small table: input channels, kernel, expanded channels, output
#: channels, squeeze-excite, activation ("RE" ReLU, "HS" hardswish), stride
_SMALL = (
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
    (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1),
)


class MobileNetV3Small(nn.Module):
    def __init__(
        self,
        width_mult: float = 0.25,
        last_channel: int = 128,
        num_classes: int = 10,
        blocks: tuple[tuple[int, int, int, int, bool, str, int], ...] = _SMALL[:5],
    ) -> None:
        super().__init__()

        def w(c: int) -> int:
            return _divisible(c * width_mult)

        acts = {"RE": nn.ReLU, "HS": nn.Hardswish}
        layers: list[nn.Module] = [_conv_bn_act(3, w(16), 3, 2, act=nn.Hardswish)]
        for cin, k, exp, cout, se, act, stride in blocks:
            layers.append(InvertedResidual(w(cin), k, w(exp), w(cout), se, acts[act], stride))
        last_conv = 6 * w(blocks[-1][3])
        layers.append(_conv_bn_act(w(blocks[-1][3]), last_conv, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(0.2, inplace=True),
            nn.Linear(last_channel, num_classes),
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def mobilenet_v3_small() -> nn.Module:
    return MobileNetV3Small()


# ------------------------------------------------------------------------------ Transformer


def transformer_encoder_layer() -> nn.Module:
    return nn.TransformerEncoderLayer(
        d_model=64, nhead=4, dim_feedforward=128, dropout=0.1, batch_first=True
    )
