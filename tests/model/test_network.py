"""Shapes, frozen teacher, loss and anomaly-map properties of the Reverse Distillation network."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from rdad.model.anomaly_map import (
    AnomalyMap,
    blur_matrix,
    gaussian_kernel_1d,
    interpolation_matrix,
)
from rdad.model.backbones import BACKBONES, Teacher, TeacherWeightsError
from rdad.model.loss import distillation_loss
from rdad.model.network import Features, InferenceOutput, ReverseDistillation

SIZE = 64


def make(
    backbone: str = "resnet18", image_size: int = SIZE, **kwargs: object
) -> ReverseDistillation:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ReverseDistillation(
            backbone=backbone, image_size=image_size, teacher_weights="random", **kwargs
        )


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, SIZE, SIZE, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_student_mirrors_teacher_shapes_for_every_backbone(backbone: str) -> None:
    net = make(backbone).train()
    teacher, student = net(images())
    expected = [
        (2, c, SIZE // s, SIZE // s)
        for c, s in zip(BACKBONES[backbone].channels, (4, 8, 16), strict=True)
    ]
    assert [tuple(t.shape) for t in teacher] == expected
    assert [tuple(s.shape) for s in student] == expected
    out = net.eval()(images())
    assert isinstance(out, InferenceOutput)
    assert out.anomaly_map.shape == (2, SIZE, SIZE) and out.score.shape == (2,)
    assert out.anomaly_map.dtype == torch.float32


def test_training_returns_features_and_eval_returns_map_and_score() -> None:
    net = make()
    assert isinstance(net.train()(images()), Features)
    out = net.eval()(images())
    assert isinstance(out, InferenceOutput)
    # Image score is the max of the smoothed map.
    torch.testing.assert_close(out.score, out.anomaly_map.flatten(1).amax(1))


def test_teacher_frozen_and_batchnorm_stats_unchanged_after_train_step() -> None:
    net = make().train()
    assert not net.teacher.training
    before = {k: v.clone() for k, v in net.teacher.state_dict().items()}
    student_before = net.bottleneck.fuse2[1].running_mean.clone()
    opt = torch.optim.Adam(net.trainable_parameters(), lr=0.01)
    teacher, student = net(images())
    distillation_loss(teacher, student).backward()
    opt.step()
    assert all(not p.requires_grad for p in net.teacher.parameters())
    for key, value in net.teacher.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    # Sanity: the trainable part's BatchNorm did update, so the check above is meaningful.
    assert not torch.equal(net.bottleneck.fuse2[1].running_mean, student_before)


def test_image_size_is_checked_in_init() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        make(image_size=50)
    with pytest.raises(ValueError, match="unknown backbone"):
        make("vgg16")


def test_teacher_weights_file_with_missing_head_loads(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(3)
    state = {k: v for k, v in resnet18().state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "teacher.pth"
    torch.save(state, path)
    teacher = Teacher(backbone="resnet18", weights=str(path))
    torch.testing.assert_close(teacher.stem[0].weight, state["conv1.weight"])
    torch.testing.assert_close(teacher.layer3[1].bn2.running_var, state["layer3.1.bn2.running_var"])


def test_teacher_weights_file_of_other_architecture_is_refused(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    path = tmp_path / "wrong.pth"
    torch.save(resnet50().state_dict(), path)
    with pytest.raises(TeacherWeightsError, match="does not match"):
        Teacher(backbone="resnet18", weights=str(path))
    with pytest.raises(TeacherWeightsError, match="not found"):
        Teacher(backbone="resnet18", weights=str(tmp_path / "missing.pth"))


def test_imagenet_unavailable_stops_with_a_fix_never_random(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(TeacherWeightsError, match="--teacher-weights PATH"):
        Teacher(backbone="resnet18", weights="imagenet")


def test_random_teacher_warns_loudly_and_is_seeded() -> None:
    with pytest.warns(UserWarning, match="RANDOM weights"):
        a = Teacher(backbone="resnet18", weights="random", seed=7)
    with pytest.warns(UserWarning):
        b = Teacher(backbone="resnet18", weights="random", seed=7)
    torch.testing.assert_close(a.layer2[0].conv1.weight, b.layer2[0].conv1.weight)


def test_loss_is_zero_for_identical_features_and_positive_otherwise() -> None:
    feats = [torch.randn(2, c, s, s) for c, s in ((8, 8), (16, 4), (32, 2))]
    assert distillation_loss(feats, [f.clone() for f in feats]).item() == pytest.approx(0, abs=1e-6)
    # Scale-invariant per sample (cosine), so a scaled copy is still a perfect student.
    scaled = [3.0 * f for f in feats]
    assert distillation_loss(feats, scaled).item() == pytest.approx(0, abs=1e-6)
    assert distillation_loss(feats, [-f for f in feats]).item() == pytest.approx(6.0, abs=1e-5)


def test_blur_kernel_sums_to_one_and_constant_map_stays_constant() -> None:
    kernel = gaussian_kernel_1d(4.0)
    assert kernel.numel() == 33 and kernel.sum().item() == pytest.approx(1.0, abs=1e-6)
    blur = blur_matrix(40, 4.0)
    constant = torch.full((40, 40), 2.5, dtype=torch.float64)
    torch.testing.assert_close(blur @ constant @ blur.T, constant)
    with pytest.raises(ValueError, match="too small"):
        blur_matrix(16, 4.0)


def test_blur_matrix_matches_scipy_gaussian_filter() -> None:
    rng = np.random.default_rng(0)
    raw = rng.random((48, 48))
    blur = blur_matrix(48, 4.0).numpy()
    np.testing.assert_allclose(blur @ raw @ blur.T, gaussian_filter(raw, sigma=4, mode="reflect"))


@pytest.mark.parametrize(("n", "size"), [(7, 30), (16, 64), (1, 12), (64, 64)])
def test_interpolation_matrix_matches_torch_bilinear(n: int, size: int) -> None:
    x = torch.rand(1, 1, n, n, dtype=torch.float64)
    matrix = interpolation_matrix(n, size)
    expected = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
    torch.testing.assert_close(matrix @ x[0, 0] @ matrix.T, expected[0, 0])


@pytest.mark.parametrize("mode", ["sum", "product"])
def test_anomaly_map_equals_resize_then_scipy_blur(mode: str) -> None:
    """The matrix form is the paper's computation: upsample each scale (bilinear), combine, blur
    with scipy's gaussian_filter (σ=4, reflect), max."""
    torch.manual_seed(0)
    teacher = [torch.randn(2, c, s, s) for c, s in ((8, 16), (16, 8), (32, 4))]
    student = [t + torch.randn_like(t) for t in teacher]
    anomaly_map, score = AnomalyMap(image_size=SIZE, mode=mode)(teacher, student)
    raw: torch.Tensor | None = None
    for t, s in zip(teacher, student, strict=True):
        d = 1.0 - F.cosine_similarity(t, s, dim=1).unsqueeze(1)
        d = F.interpolate(d, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
        raw = d if raw is None else (raw + d if mode == "sum" else raw * d)
    assert raw is not None
    expected = np.stack([gaussian_filter(m[0].double().numpy(), 4, mode="reflect") for m in raw])
    np.testing.assert_allclose(anomaly_map.numpy(), expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(score.numpy(), expected.reshape(2, -1).max(1), atol=1e-5)


def test_anomaly_map_is_zero_when_student_equals_teacher() -> None:
    amap = AnomalyMap(image_size=SIZE)
    feats = [torch.randn(2, c, s, s) for c, s in ((8, 16), (16, 8), (32, 4))]
    anomaly_map, score = amap(feats, [f.clone() for f in feats])
    assert anomaly_map.shape == (2, SIZE, SIZE)
    assert anomaly_map.abs().max().item() < 1e-5 and score.abs().max().item() < 1e-5
    other = [torch.randn_like(f) for f in feats]
    assert amap(feats, other)[1].min().item() > 0.1


def test_anomaly_map_modes_are_checked_and_product_differs() -> None:
    with pytest.raises(ValueError, match="mode"):
        AnomalyMap(image_size=SIZE, mode="max")
    feats = [torch.randn(1, 4, s, s) for s in (16, 8, 4)]
    other = [torch.randn_like(f) for f in feats]
    summed = AnomalyMap(image_size=SIZE, mode="sum")(feats, other)[0]
    product = AnomalyMap(image_size=SIZE, mode="product")(feats, other)[0]
    assert not torch.allclose(summed, product)
