"""Student decoder: a mirrored ResNet that upsamples with 2×2 stride-2 transposed convolutions.

It maps the OCBE code back to three feature maps with exactly the shapes of teacher layer3,
layer2 and layer1 (the official code's ``de_resnet``).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet

from .backbones import BackboneSpec
from .init import official_init_


def deconv2x2(cin: int, cout: int, *, groups: int = 1) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2, groups=groups, bias=False)


class DeBasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, *, upsample: nn.Module | None = None, base_width: int = 64
    ) -> None:
        super().__init__()
        if base_width != 64:
            raise ValueError("DeBasicBlock only supports base_width=64")
        stride2 = upsample is not None
        self.conv1 = deconv2x2(inplanes, planes) if stride2 else resnet.conv3x3(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = resnet.conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.upsample is None else self.upsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class DeBottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, *, upsample: nn.Module | None = None, base_width: int = 64
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0))
        stride2 = upsample is not None
        self.conv1 = resnet.conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = deconv2x2(width, width) if stride2 else resnet.conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = resnet.conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.upsample is None else self.upsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class StudentDecoder(nn.Module):
    """``(B, 2·C3, H/32, W/32)`` → ``[(B, C1, H/4), (B, C2, H/8), (B, C3, H/16)]``.

    The output order is the teacher's (layer1, layer2, layer3)."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        block = DeBottleneck if spec.block is resnet.Bottleneck else DeBasicBlock
        self._inplanes = 512 * block.expansion
        self._base_width = spec.width_per_group
        n3, n2, n1 = spec.decoder_layers
        self.up3 = self._make_stage(block, 256, n3)  # → teacher layer3 shape
        self.up2 = self._make_stage(block, 128, n2)  # → teacher layer2 shape
        self.up1 = self._make_stage(block, 64, n1)  # → teacher layer1 shape
        official_init_(self)

    def _make_stage(
        self, block: type[DeBasicBlock] | type[DeBottleneck], planes: int, num_blocks: int
    ) -> nn.Sequential:
        out_channels = planes * block.expansion
        upsample = nn.Sequential(
            deconv2x2(self._inplanes, out_channels), nn.BatchNorm2d(out_channels)
        )
        layers: list[nn.Module] = [
            block(self._inplanes, planes, upsample=upsample, base_width=self._base_width)
        ]
        self._inplanes = out_channels
        layers += [
            block(out_channels, planes, base_width=self._base_width) for _ in range(1, num_blocks)
        ]
        return nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> list[torch.Tensor]:
        f3 = self.up3(code)
        f2 = self.up2(f3)
        f1 = self.up1(f2)
        return [f1, f2, f3]
