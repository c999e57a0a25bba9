"""RD++ (``--method rd++``): projection layers, losses, pseudo-anomalies, and RD left as it was."""

from __future__ import annotations

import warnings

import geomloss
import numpy as np
import pytest
import torch

from rdad.model.backbones import BACKBONES
from rdad.model.config import TrainConfig
from rdad.model.network import Features, InferenceOutput, RDPPFeatures, ReverseDistillation
from rdad.model.pseudo_anomaly import PseudoAnomalies, noise_field, patch_limits
from rdad.model.rdpp_loss import RDPPLoss
from rdad.model.train import parameter_groups

SIZE = 64

# Parameters of the reference code's MultiProjectionLayer for each backbone's stage widths (its
# base=64 instance is wide_resnet50_2's 256/512/1024): per stage of C channels four 3×3 convs
# C→C/2→C/4→C/2→C with biases, InstanceNorm without parameters.
REFERENCE_PROJECTION = {
    "resnet18": 968_688,
    "resnet34": 968_688,
    "resnet50": 15_486_912,
    "wide_resnet50_2": 15_486_912,
    "wide_resnet101_2": 15_486_912,
}


def make(method: str = "rd++", backbone: str = "resnet18") -> ReverseDistillation:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the deliberate "random teacher" warning
        return ReverseDistillation(
            backbone=backbone, image_size=SIZE, teacher_weights="random", method=method
        )


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, SIZE, SIZE, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_projection_parameter_count_equals_the_reference_code(backbone: str) -> None:
    assert set(REFERENCE_PROJECTION) == set(BACKBONES)
    rd, rdpp = make("rd", backbone), make("rd++", backbone)
    assert rd.projection is None
    assert rdpp.projection is not None
    projection = sum(p.numel() for p in rdpp.projection.parameters())
    assert projection == REFERENCE_PROJECTION[backbone]
    # OCBE and student are RD's; the projection comes on top and trains with them.
    trainable = sum(p.numel() for p in rdpp.trainable_parameters())
    assert trainable == sum(p.numel() for p in rd.trainable_parameters()) + projection
    assert trainable == sum(p.numel() for p in rdpp.parameters() if p.requires_grad)


def test_a_seed_gives_rd_and_rdpp_the_same_ocbe_and_student_start() -> None:
    torch.manual_seed(3)
    rd = make("rd")
    torch.manual_seed(3)
    rdpp = make("rd++")
    rd_state, rdpp_state = rd.state_dict(), rdpp.state_dict()
    assert {k for k in rdpp_state if not k.startswith("projection.")} == set(rd_state)
    for key, value in rd_state.items():
        torch.testing.assert_close(rdpp_state[key], value, rtol=0, atol=0, msg=key)


def test_training_output_and_inference_contract() -> None:
    net = make().train()
    x = images(4)
    out = net(x, x)
    assert isinstance(out, RDPPFeatures)
    shapes = [(4, c, SIZE // s, SIZE // s) for c, s in zip((64, 128, 256), (4, 8, 16), strict=True)]
    for features in out:
        assert [tuple(f.shape) for f in features] == shapes
    # Noisy images equal to the clean ones: the same teacher features and projections.
    for a, b in zip(out.teacher, out.teacher_noisy, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="pseudo-anomalous"):
        net(x)
    # Eval: the same map-and-score contract as RD; the map compares teacher and student.
    net.eval()
    result = net(x)
    assert isinstance(result, InferenceOutput)
    assert result.anomaly_map.shape == (4, SIZE, SIZE) and result.score.shape == (4,)
    teacher, student = net.features(x)
    torch.testing.assert_close(net.anomaly_map(teacher, student)[1], result.score)
    # The student really sees projected features: without the projection the map differs.
    assert net.projection is not None
    assert not torch.allclose(net.student(net.bottleneck(teacher))[0], student[0]), (
        "projection must sit between teacher and OCBE"
    )


def test_rd_training_output_is_unchanged_by_a_noisy_argument() -> None:
    net = make("rd").train()
    assert isinstance(net(images()), Features)


def test_loss_terms_follow_the_reference_definitions() -> None:
    torch.manual_seed(0)
    feats = [torch.randn(4, c, s, s) for c, s in ((8, 8), (16, 4), (32, 2))]
    other = [torch.randn_like(f) for f in feats]
    cfg = TrainConfig(method="rd++")
    loss = RDPPLoss(cfg)
    # Projections of noisy images equal to the clean ones: no reconstruction loss.
    same = loss(feats, feats, feats, other, feats)
    assert same.reconstruct.item() == pytest.approx(0.0, abs=1e-6)
    assert same.distill.item() == pytest.approx(0.0, abs=1e-6)
    terms = loss(feats, other, feats, other, other)
    assert terms.reconstruct.item() > 0.5 and terms.distill.item() > 1.0
    # Contrast: 1 − cos of the flattened noisy-teacher and projected features, per scale.
    expected = sum(
        (1 - torch.nn.functional.cosine_similarity(t.flatten(1), p.flatten(1))).mean()
        for t, p in zip(other, feats, strict=True)
    )
    assert terms.contrast.item() == pytest.approx(float(expected), rel=1e-5)
    # SSOT: geomloss's Sinkhorn divergence between the batch and a shuffle of itself is ~0.
    assert abs(terms.ssot.item()) < 1e-6
    # The total: distill + w_proj · weighted mean of the three terms, every weight from cfg.
    w = (1.0, 0.01, 0.1)
    proj = (w[0] * terms.ssot + w[1] * terms.reconstruct + w[2] * terms.contrast) / sum(w)
    assert terms.total.item() == pytest.approx(float(terms.distill + 0.2 * proj), rel=1e-6)
    heavy = RDPPLoss(TrainConfig(method="rd++", rdpp_projection_weight=2.0))
    assert heavy(feats, other, feats, other, other).total.item() > terms.total.item()


def test_ssot_is_the_geomloss_sinkhorn_divergence() -> None:
    """Against the library called directly, on two different point clouds (non-zero)."""
    torch.manual_seed(1)
    a, b = torch.randn(6, 40), torch.randn(6, 40)
    sinkhorn = RDPPLoss(TrainConfig(method="rd++")).sinkhorn
    direct = geomloss.SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.95, diameter=1e7)
    value = sinkhorn(torch.softmax(a, -1), torch.softmax(b, -1))
    assert value.item() > 0
    assert value.item() == pytest.approx(
        direct(torch.softmax(a, -1), torch.softmax(b, -1)).item(), rel=1e-4
    )


def test_pseudo_anomalies_are_one_seeded_noise_patch_per_image() -> None:
    low, high = patch_limits(256)
    assert (low, high) == (10, 32)  # the reference's randint(10, 256 // 8)
    noise = PseudoAnomalies(image_size=SIZE, seed=0, strength=0.2)
    clean = torch.full((5, SIZE, SIZE, 3), 128, dtype=torch.uint8)
    index = torch.tensor([0, 1, 2, 3, 4])
    a = noise(clean, index, epoch=0)
    assert a.dtype == torch.uint8 and torch.equal(clean, torch.full_like(clean, 128))  # no in-place
    changed = (a != clean).any(-1)
    for mask in changed:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        assert 0 < rows.numel() < noise.high and 0 < cols.numel() < noise.high
    # A pure function of (seed, epoch, image index): order and batch do not matter.
    b = noise(clean[[3, 1]], index[[3, 1]], epoch=0)
    assert torch.equal(b, a[[3, 1]])
    assert not torch.equal(noise(clean, index, epoch=1), a)
    other_seed = PseudoAnomalies(image_size=SIZE, seed=1, strength=0.2)
    assert not torch.equal(other_seed(clean, index, epoch=0), a)


def test_noise_patches_are_crops_of_one_field_as_the_reference_samples_them() -> None:
    """The reference evaluates each (h, w) patch from the origin with a fixed seed: a crop."""
    small, large = noise_field(7, 12), noise_field(7, 31)
    np.testing.assert_allclose(small, large[:, :12, :12])
    assert 0.3 < np.abs(large).max() < 2.0  # 6 octaves, persistence 0.6


def test_parameter_groups_keep_rd_and_give_the_projection_its_own_rate() -> None:
    cfg = TrainConfig(method="rd++", lr=0.005, rdpp_projection_lr=0.001)
    rd = make("rd")
    assert parameter_groups(rd, cfg) == rd.trainable_parameters()
    rdpp = make("rd++")
    groups = parameter_groups(rdpp, cfg)
    assert isinstance(groups[1], dict) and isinstance(groups[0], dict)
    optimizer = torch.optim.Adam(groups, lr=cfg.lr)
    assert [g["lr"] for g in optimizer.param_groups] == [0.005, 0.001]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(rdpp.trainable_parameters())


def test_config_without_method_is_rd_and_rdpp_weights_round_trip() -> None:
    assert TrainConfig.from_dict({"backbone": "resnet18"}).method == "rd"
    cfg = TrainConfig(method="rd++", rdpp_contrast_weight=0.3, rdpp_noise_strength=0.1)
    from dataclasses import asdict

    again = TrainConfig.from_dict(asdict(cfg))
    assert again == cfg
    with pytest.raises(ValueError, match="method"):
        make("rd+")
