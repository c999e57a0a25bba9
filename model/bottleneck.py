"""One-Class Bottleneck Embedding (OCBE), as in the official Reverse Distillation code.

Multi-scale feature fusion (MFF) brings teacher layer1 and layer2 to layer3's resolution with 3×3
stride-2 convolutions and concatenates them with layer3; the one-class embedding (OCE) is a
stride-2 ResNet stage (like layer4) that compresses the fused features into a compact code.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet

from .backbones import BackboneSpec
from .init import official_init_


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [resnet.conv3x3(cin, cout, stride=2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class OCBE(nn.Module):
    """``[(B, C1, H/4), (B, C2, H/8), (B, C3, H/16)]`` → ``(B, 2·C3, H/32, W/32)``."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        c1, c2, c3 = spec.channels
        e = spec.block.expansion
        # layer1 needs two stride-2 steps (H/4 → H/16), layer2 one (H/8 → H/16).
        self.fuse1 = nn.Sequential(*_conv_bn_relu(c1, 128 * e), *_conv_bn_relu(128 * e, c3))
        self.fuse2 = nn.Sequential(*_conv_bn_relu(c2, c3))
        self.embed = self._make_oce(spec, in_channels=3 * c3)
        official_init_(self)

    @staticmethod
    def _make_oce(spec: BackboneSpec, *, in_channels: int) -> nn.Sequential:
        block, planes = spec.block, 512
        out_channels = planes * block.expansion
        downsample = nn.Sequential(
            resnet.conv1x1(in_channels, out_channels, stride=2), nn.BatchNorm2d(out_channels)
        )
        kwargs = {"base_width": spec.width_per_group} if block is resnet.Bottleneck else {}
        blocks: list[nn.Module] = [block(in_channels, planes, 2, downsample, **kwargs)]
        blocks += [block(out_channels, planes, **kwargs) for _ in range(1, spec.bottleneck_blocks)]
        return nn.Sequential(*blocks)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = features
        fused = torch.cat([self.fuse1(f1), self.fuse2(f2), f3], dim=1)
        return self.embed(fused)
