"""Dataset discovery and deliberate decoding of awkward image files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from rdad.model.data import (
    DatasetError,
    good_training_images,
    is_mvtec_layout,
    list_test_samples,
    load_images,
    load_mask,
    split_holdout,
)

SIZE = 32


def write_awkward_folder(root: Path) -> dict[str, Path]:
    """One file per awkward case, in nested folders (plain-folder datasets are recursive)."""
    (root / "a" / "b").mkdir(parents=True)
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB
    files = {
        "rgb": root / "rgb.png",
        "gray": root / "a" / "gray.png",
        "rgba": root / "a" / "rgba.png",
        "gray16": root / "a" / "b" / "gray16.png",
        "palette": root / "palette.png",
        "jpeg": root / "photo.JPG",
        "broken": root / "broken.png",
        "truncated": root / "a" / "truncated.jpg",
    }
    Image.fromarray(rgb).save(files["rgb"])
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(files["gray"])
    rgba = np.dstack([rgb, np.zeros((40, 40), np.uint8)])  # fully transparent: alpha is dropped
    Image.fromarray(rgba, "RGBA").save(files["rgba"])
    cv2.imwrite(str(files["gray16"]), np.full((40, 40), 51400, np.uint16))  # 51400/257 = 200
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(files["palette"])
    Image.fromarray(rgb).save(files["jpeg"], quality=95)
    files["broken"].write_bytes(b"this is not an image at all")
    full = root / "tmp.jpg"
    Image.fromarray(rgb).save(full)
    files["truncated"].write_bytes(full.read_bytes()[:60])
    full.unlink()
    (root / "notes.txt").write_text("ignored: not an image extension")
    return files


def test_plain_folder_is_recursive_and_broken_files_are_skipped_by_name(tmp_path: Path) -> None:
    files = write_awkward_folder(tmp_path)
    paths = good_training_images(tmp_path)
    assert set(paths) == set(files.values())
    loaded = load_images(paths, SIZE)
    skipped = {p.name for p, _ in loaded.skipped}
    assert skipped == {"broken.png", "truncated.jpg"}
    assert loaded.images.shape == (6, SIZE, SIZE, 3) and loaded.images.dtype == np.uint8
    by_name = dict(zip([p.name for p in loaded.paths], loaded.images, strict=True))
    np.testing.assert_array_equal(by_name["rgb.png"][0, 0], [200, 0, 0])  # RGB order, not BGR
    np.testing.assert_array_equal(by_name["gray.png"][5, 5], [90, 90, 90])
    np.testing.assert_array_equal(by_name["rgba.png"][5, 5], [200, 0, 0])
    np.testing.assert_array_equal(by_name["gray16.png"][5, 5], [200, 200, 200])
    np.testing.assert_allclose(by_name["palette.png"][5, 5], [200, 0, 0], atol=2)
    np.testing.assert_allclose(by_name["photo.JPG"][5, 5].astype(int), [200, 0, 0], atol=6)


def test_mvtec_layout_discovery(synthetic_data: Path) -> None:
    assert is_mvtec_layout(synthetic_data)
    train = good_training_images(synthetic_data)
    assert len(train) == 24 and all("train" in p.parts for p in train)
    samples = list_test_samples(synthetic_data)
    defects = {s.defect for s in samples}
    assert defects == {"good", "scratch", "spot", "chunk"}
    for s in samples:
        assert s.label == (s.defect != "good")
        assert (s.mask_path is None) == (s.defect == "good")
        mask = load_mask(s.mask_path, 64)
        assert mask.dtype == bool and mask.shape == (64, 64)
        assert mask.any() == bool(s.label)


def test_empty_or_missing_folders_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        good_training_images(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no images"):
        good_training_images(tmp_path)
    with pytest.raises(DatasetError, match="test/"):
        list_test_samples(tmp_path)


def test_holdout_split_is_seeded_disjoint_and_sized() -> None:
    paths = [Path(f"{i:03d}.png") for i in range(50)]
    train, holdout = split_holdout(paths, fraction=0.1, minimum=4, seed=0)
    assert len(holdout) == 5 and len(train) == 45
    assert not set(train) & set(holdout)
    assert split_holdout(paths, fraction=0.1, minimum=4, seed=0) == (train, holdout)
    assert split_holdout(paths, fraction=0.1, minimum=4, seed=1) != (train, holdout)
    assert len(split_holdout(paths[:10], fraction=0.1, minimum=4, seed=0)[1]) == 4
    with pytest.raises(DatasetError, match="need at least"):
        split_holdout(paths[:5], fraction=0.1, minimum=4, seed=0)


def _official_mask(path: Path, size: int) -> np.ndarray:
    """The official RD4AD evaluation: Resize((S, S)) + CenterCrop(S) on the PIL mask, ToTensor,
    ``> 0.5``."""
    from torchvision import transforms

    gt = transforms.Compose(
        [transforms.Resize((size, size)), transforms.CenterCrop(size), transforms.ToTensor()]
    )(Image.open(path))
    return (gt[0] > 0.5).numpy()


def test_masks_are_resized_like_the_official_evaluation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((900, 900), np.uint8)
    cv2.circle(mask, (300, 420), 120, 255, -1)
    cv2.line(mask, (50, 100), (850, 700), 255, 3)  # a thin scratch
    mask[rng.random((900, 900)) < 0.001] = 255  # speckles
    path = tmp_path / "mask.png"
    Image.fromarray(mask).save(path)
    for size in (256, 224, 128):
        got = load_mask(path, size)
        assert got.dtype == bool and got.shape == (size, size)
        np.testing.assert_array_equal(got, _official_mask(path, size))
    assert not load_mask(None, 64).any()


def test_thin_line_mask_does_not_alias_with_its_sub_pixel_position(tmp_path: Path) -> None:
    """900 → 256 px: each output pixel covers ~3.5 input rows. A 1-px line covers well under
    half an output pixel, so it is below the 0.5 threshold wherever it lies; a 4-px line always
    covers at least one output row fully. Point sampling (cv2.INTER_LINEAR) made the 1-px line
    appear or vanish depending on its row."""
    for width, allowed_rows in ((1, {0}), (4, {1, 2})):
        for row in range(400, 408):  # every phase of the 3.5-px sampling grid
            mask = np.zeros((900, 900), np.uint8)
            mask[row : row + width, 100:800] = 255
            path = tmp_path / f"line{width}_{row}.png"
            Image.fromarray(mask).save(path)
            got = load_mask(path, 256)
            rows = np.flatnonzero(got.any(axis=1))
            assert len(rows) in allowed_rows, (width, row)
            if len(rows):  # one unbroken line, no dashes
                assert got[rows].any(axis=0)[29:227].all(), (width, row)
