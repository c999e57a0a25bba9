"""The official RD4AD initialisation of the trainable parts (OCBE and student decoder).

The official ``BN_layer`` and ``de_resnet`` constructors end with torchvision's ResNet loop:
``nn.Conv2d`` weights get ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` and BatchNorm
weight 1 / bias 0. The loop matches ``nn.Conv2d`` only, so the decoder's ``nn.ConvTranspose2d``
up-sampling layers keep PyTorch's default initialisation there — and here.
"""

from __future__ import annotations

from torch import nn


def official_init_(module: nn.Module) -> None:
    """Re-initialise every ``nn.Conv2d`` and BatchNorm/GroupNorm below ``module`` in place."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
