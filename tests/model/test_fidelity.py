"""Fidelity to the official RD4AD code (hq-deng/RD4AD): parameter counts and initialisation."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from rdad.model.network import ReverseDistillation

# Trainable OCBE + decoder parameters of the official code (its BN_layer's unused conv4/bn4 left
# out): resnet{18,34,50} and wide_resnet50_2 with BN_layer(…, 2 / 3 / 3 / 3) and de_resnet*.
OFFICIAL_TRAINABLE = {
    "resnet18": 15_383_168,
    "resnet34": 22_171_264,
    "resnet50": 46_651_392,
    "wide_resnet50_2": 83_802_624,
}


def build(backbone: str) -> ReverseDistillation:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the deliberate "random teacher" warning
        return ReverseDistillation(backbone=backbone, image_size=64, teacher_weights="random")


@pytest.mark.parametrize("backbone", sorted(OFFICIAL_TRAINABLE))
def test_trainable_parameter_count_equals_the_official_code(backbone: str) -> None:
    net = build(backbone)
    trainable = sum(p.numel() for p in net.trainable_parameters())
    assert trainable == OFFICIAL_TRAINABLE[backbone]
    # Only OCBE + decoder train: the teacher is frozen.
    assert trainable == sum(p.numel() for p in net.parameters() if p.requires_grad)


def test_ocbe_and_decoder_use_the_official_initialisation() -> None:
    torch.manual_seed(0)
    net = build("resnet18")
    convs = bns = deconvs = 0
    for part in (net.bottleneck, net.student):
        for name, m in part.named_modules():
            if isinstance(m, nn.Conv2d):
                convs += 1
                # kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out).
                out_ch, _, kh, kw = m.weight.shape
                expected = math.sqrt(2.0 / (out_ch * kh * kw))
                std = m.weight.std().item()
                assert std == pytest.approx(expected, rel=0.1), name
                assert abs(m.weight.mean().item()) < 0.1 * expected, name
                # PyTorch's default (kaiming_uniform, a=√5) has std √(1/(3·fan_in)): tell apart.
                fan_in = m.weight[0].numel()
                assert std != pytest.approx(math.sqrt(1 / (3 * fan_in)), rel=0.1), name
            elif isinstance(m, nn.BatchNorm2d):
                bns += 1
                assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
            elif isinstance(m, nn.ConvTranspose2d):
                # The official loop matches nn.Conv2d only: transposed convs keep the default,
                # uniform in ±√(1/fan_in) with fan_in computed on dim 1 (= out_channels).
                deconvs += 1
                bound = 1 / math.sqrt(m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3])
                assert m.weight.abs().max().item() <= bound + 1e-7, name
    assert (convs, bns, deconvs) == (17, 23, 6)  # resnet18: every layer was looked at
