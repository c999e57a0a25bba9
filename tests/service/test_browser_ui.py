"""The inspection page and the offline API docs in a real headless chromium.

A small model trained on real bottle images (resnet18 stand-in teacher, 64 px, one epoch) is served
by a real ``rdad serve`` process; a bottle test image is uploaded through the page's file picker.
Screenshots are saved under test-artifacts/ (see tests/browser.py).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

from tests.browser import artifact_dir, browser, serve
from tests.conftest import SHARED, shared_path

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="session")
def bottle_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bottle.onnx``: resnet18 with the stand-in pretrained teacher, 64 px, 1 epoch on 40 good
    bottle images (calibrated on held-out ones): good bottles score near the threshold."""
    from rdad.model.export import export_onnx
    from rdad.model.train import TrainConfig, train

    bottle = shared_path("RDAD_MVTEC_BOTTLE", SHARED / "datasets" / "mvtec_bottle")
    teacher = shared_path("RDAD_TEACHER_WEIGHTS", SHARED / "teachers" / "resnet18_cifar10.pth")
    root = tmp_path_factory.mktemp("bottle-ui")
    good = root / "good"
    good.mkdir()
    for path in sorted((bottle / "train" / "good").glob("*.png"))[:40]:
        (good / path.name).symlink_to(path)
    config = TrainConfig(
        data=str(good),
        out=str(root / "run"),
        backbone="resnet18",
        image_size=64,
        epochs=1,
        batch_size=8,
        teacher_weights=str(teacher),
        holdout_fraction=0.25,
        device="cpu",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        checkpoint = train(config, progress=False)
    export_onnx(checkpoint, root / "models" / "bottle.onnx")
    return root / "models"


@pytest.fixture(scope="session")
def bottle_image() -> Path:
    bottle = shared_path("RDAD_MVTEC_BOTTLE", SHARED / "datasets" / "mvtec_bottle")
    return bottle / "test" / "good" / "000.png"


def test_inspection_page_scores_an_upload_and_rejudges_live(
    bottle_model_dir: Path, bottle_image: Path, tmp_path: Path
) -> None:
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not a picture")
    with serve(bottle_model_dir) as url, browser(tmp_path) as page:
        page.goto(url + "/")
        page.wait_for_selector("#model option[value=bottle]", state="attached")
        assert "resnet18, 64 px" in page.inner_text("#model-info")
        page.set_input_files("#files", str(bottle_image))
        card = page.locator(".card").first
        page.wait_for_selector(".card[data-verdict=normal], .card[data-verdict=anomalous]")

        # Score and verdict shown; the heatmap overlay has the uploaded image's own size.
        assert card.locator(".name").inner_text() == bottle_image.name
        assert "score" in card.locator(".numbers").inner_text()
        assert card.locator(".verdict").inner_text() in ("ANOMALOUS", "OK — normal")
        assert "decode" in card.locator(".timings").inner_text()
        size = card.locator("img.heat").evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert size == [900, 900]
        photo = card.locator("img.photo").evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert photo == [900, 900]
        # Layers follow their checkboxes (the hidden attribute is not overridden by the CSS).
        assert card.locator("svg.boxes").is_visible()
        assert card.locator("img.mask").is_visible() == page.is_checked("#show-mask")
        page.uncheck("#show-boxes")
        assert card.locator("svg.boxes").is_hidden()
        page.check("#show-boxes")
        score = float(card.get_attribute("data-score") or "nan")
        assert 0.01 < score < 0.99, f"normalised score {score}: the slider cannot cross it"

        # Move the threshold control with the keyboard: all the way down, then all the way up.
        slider = page.locator("#threshold")
        slider.focus()
        slider.press("Home")
        assert card.get_attribute("data-verdict") == "anomalous"
        assert card.locator(".verdict").inner_text() == "ANOMALOUS"
        assert page.inner_text("#threshold-value") == "0.01"
        slider.press("End")
        assert card.get_attribute("data-verdict") == "normal"
        assert "1 image scored · 0 anomalous at threshold 0.99" in page.inner_text("#summary")

        # The opacity slider drives the heatmap layer.
        page.locator("#opacity").evaluate(
            "el => { el.value = '0.8'; el.dispatchEvent(new Event('input')); }"
        )
        assert card.locator("img.heat").evaluate("img => getComputedStyle(img).opacity") == "0.8"

        # An API error is shown readably on its card, not as raw JSON.
        page.locator("#threshold-reset").click()
        page.set_input_files("#files", str(not_an_image))
        error = page.locator(".card[data-verdict=error] .error")
        error.wait_for()
        assert error.inner_text().startswith("HTTP 400 — bad_image: notes.png")
        assert page.locator(".card[data-verdict=error] img.photo").is_hidden()  # no broken icon
        page.screenshot(path=str(artifact_dir() / "inspection-page.png"), full_page=True)
        assert page.external_requests == []


def test_uploads_of_one_name_get_cards_told_apart(
    bottle_model_dir: Path, bottle_image: Path, tmp_path: Path
) -> None:
    # Three files called 000.png, from three folders (a browser gives the page no folder).
    uploads = []
    for folder in ("line1", "line2", "line3"):
        (tmp_path / folder).mkdir()
        uploads.append(tmp_path / folder / "000.png")
        shutil.copy(bottle_image, uploads[-1])
    with serve(bottle_model_dir) as url, browser(tmp_path) as page:
        page.goto(url + "/")
        page.wait_for_selector("#model option[value=bottle]", state="attached")
        page.set_input_files("#files", [str(p) for p in uploads])
        page.wait_for_function(
            "document.querySelectorAll('.card[data-verdict=normal], "
            ".card[data-verdict=anomalous]').length === 3"
        )
        titles = page.locator(".card .name").all_inner_texts()
        assert sorted(titles) == ["000.png", "000.png (2)", "000.png (3)"]
        infos = page.locator(".card .file").all_inner_texts()
        kb = f"{bottle_image.stat().st_size / 1024:.1f} KB"
        assert len(infos) == 3 and all(info.startswith(kb + " · modified ") for info in infos)


def test_api_key_field_appears_when_auth_is_on(bottle_model_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(bottle_model_dir, models)
    with serve(models, RDAD_API_KEY="s3cret") as url, browser(tmp_path) as page:
        page.goto(url + "/")
        page.wait_for_selector("#key-row:not([hidden])")
        assert "API key" in page.inner_text("#error")
        page.fill("#api-key", "wrong")
        page.click("#key-use")
        page.wait_for_selector("#error:has-text('refused')")
        page.fill("#api-key", "s3cret")
        page.click("#key-use")
        page.wait_for_selector("#model option[value=bottle]", state="attached")
        assert page.locator("#error").is_hidden()
        # The API docs offer to authorize: this server checks a key.
        page.goto(url + "/docs")
        page.wait_for_selector(".opblock-summary-path")
        assert page.locator(".btn.authorize").count() == 1
        assert page.locator(".opblock .authorization__btn").count() > 0


def test_docs_and_redoc_render_offline(bottle_model_dir: Path, tmp_path: Path) -> None:
    with serve(bottle_model_dir) as url, browser(tmp_path) as page:
        page.goto(url + "/docs")
        page.wait_for_selector(".opblock-summary-path")
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert "/predict" in paths and "/models/{name}/predict" in paths and "/readyz" in paths
        # No key configured: nothing to authorize, no lock on any route.
        assert page.locator(".btn.authorize").count() == 0
        assert page.locator(".opblock .authorization__btn").count() == 0
        page.screenshot(path=str(artifact_dir() / "docs.png"))
        page.goto(url + "/redoc")
        page.locator("h2", has_text="Score images with the default model").wait_for()
        page.screenshot(path=str(artifact_dir() / "redoc.png"))
        # ReDoc's bundle links its "powered by" logo from its CDN: a cosmetic image, nothing
        # the page needs. Every script, stylesheet and document came from the service.
        assert [r for r in page.external_requests if not r.startswith("image ")] == []
