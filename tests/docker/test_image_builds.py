"""How the images are built: from the lock files, and for the serving image with a CUDA base image
and an onnxruntime-gpu version that belong together (docker/check_image.py BUILD_PAIRS: CUDA 13,
the default, and CUDA 12 for hosts with older drivers).

No Docker engine runs here, so the build arguments, the lock rewrite the serving image performs and
the build-time checks are exercised on the host."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import onnxruntime
import pytest

from .test_docker_files import DOCKER, REPO, Dockerfile, load_check_image, parse_dockerfile

CUDA_TAG = re.compile(r"^nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu\d\d\.\d\d$")


@pytest.fixture(scope="module")
def serve_df() -> Dockerfile:
    return parse_dockerfile(DOCKER / "Dockerfile")


def locked_onnxruntime_gpu(lock: str) -> str:
    (line,) = [
        ln
        for ln in (REPO / "requirements" / lock).read_text().splitlines()
        if ln.startswith("onnxruntime-gpu==")
    ]
    return line.split("==")[1].split(";")[0].strip()


def test_serving_image_defaults_are_the_cuda13_pair(serve_df: Dockerfile) -> None:
    check_image = load_check_image()
    args = serve_df.global_args
    assert {k: args[k] for k in ("CUDA_IMAGE", "ONNXRUNTIME_GPU_VERSION")} == (
        check_image.BUILD_PAIRS[13]
    )
    image, alias = serve_df.stages[serve_df.final_stage]
    assert image == check_image.BUILD_PAIRS[13]["CUDA_IMAGE"] and alias == "runtime"
    assert "ONNXRUNTIME_GPU_VERSION" in serve_df.get("ARG", serve_df.final_stage)


def test_default_onnxruntime_gpu_is_the_locked_one(serve_df: Dockerfile) -> None:
    """The default build installs what CI tested: the version in serve.lock and dev.lock."""
    default = serve_df.global_args["ONNXRUNTIME_GPU_VERSION"]
    assert locked_onnxruntime_gpu("serve.lock") == default
    assert locked_onnxruntime_gpu("dev.lock") == default
    assert onnxruntime.__version__ == default  # this environment installed the same lock


@pytest.mark.parametrize("cuda_major", [13, 12])
def test_build_pair_base_image_matches_the_onnxruntime_build(cuda_major: int) -> None:
    check_image = load_check_image()
    pair = check_image.BUILD_PAIRS[cuda_major]
    match = CUDA_TAG.match(pair["CUDA_IMAGE"])
    assert match, f"{pair['CUDA_IMAGE']}: want nvidia/cuda:X.Y.Z-cudnn-runtime-ubuntuNN.NN"
    assert int(match.group(1)) == cuda_major
    assert check_image.pypi_cuda_major(pair["ONNXRUNTIME_GPU_VERSION"]) == cuda_major


def test_pypi_cuda_split_holds_for_the_installed_wheel() -> None:
    """pypi_cuda_major (1.19-1.26 → 12, 1.27+ → 13) agrees with what a real wheel says it was
    built for; the image build checks the same for the version it installs."""
    check_image = load_check_image()
    assert check_image.pypi_cuda_major(onnxruntime.__version__) == (
        check_image.onnxruntime_cuda_major()
    )
    assert check_image.pypi_cuda_major("1.26.0") == 12
    assert check_image.pypi_cuda_major("1.27.0") == 13
    with pytest.raises(check_image.ImageCheckError, match="CUDA 11"):
        check_image.pypi_cuda_major("1.18.1")


def test_deploy_docs_document_the_cuda12_build(serve_df: Dockerfile) -> None:
    """The CUDA 12 pair that docs/deploy.md tells users to build with is the tested one."""
    pair = load_check_image().BUILD_PAIRS[12]
    for text in ((REPO / "docs" / "deploy.md").read_text(), (DOCKER / "Dockerfile").read_text()):
        for key, value in pair.items():
            assert f"--build-arg {key}={value}" in text


@pytest.mark.parametrize("version", ["1.31.1", "1.26.0"])
def test_serving_image_pins_the_build_arg_version_in_the_lock(
    serve_df: Dockerfile, tmp_path: Path, version: str
) -> None:
    """Run the serving image's own lock rewrite (its `sed` step) on the host: onnxruntime-gpu gets
    the build argument's version, its platform marker and every other pin stay."""
    (install,) = [r for r in serve_df.get("RUN", serve_df.final_stage) if "pip install" in r]
    assert "--no-deps -r /tmp/requirements.txt" in install and "pip check" in install
    match = re.search(r"(sed .+?)\s+/tmp/serve\.lock\s*>\s*/tmp/requirements\.txt", install)
    assert match, install
    lock = REPO / "requirements" / "serve.lock"
    done = subprocess.run(
        ["bash", "-c", f"{match.group(1)} {lock}"],
        env={"ONNXRUNTIME_GPU_VERSION": version, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    before, after = lock.read_text().splitlines(), done.stdout.splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    if version == locked_onnxruntime_gpu("serve.lock"):
        assert not changed
    else:
        ((old, new),) = changed
        assert old.startswith("onnxruntime-gpu==")
        assert new == old.replace(old.split()[0], f"onnxruntime-gpu=={version}")
        assert "sys_platform == 'linux'" in new


def test_build_check_refuses_another_onnxruntime_version() -> None:
    check_image = load_check_image()
    check_image.check_onnxruntime_version(onnxruntime.__version__)
    with pytest.raises(check_image.ImageCheckError, match=r"ONNXRUNTIME_GPU_VERSION is 1\.26\.0"):
        check_image.check_onnxruntime_version("1.26.0")


def test_build_check_names_the_matching_pair_when_cuda_does_not_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A base image without the CUDA libraries the wheel needs fails the build with the build
    arguments to use."""
    check_image = load_check_image()
    major = check_image.onnxruntime_cuda_major()
    monkeypatch.setattr(check_image, "cuda_libraries", lambda m: [f"libno-such-cuda.so.{m}"])
    with pytest.raises(check_image.ImageCheckError) as failure:
        check_image.check_cuda_libraries()
    message = str(failure.value)
    assert f"libno-such-cuda.so.{major}" in message
    assert f"--build-arg CUDA_IMAGE={check_image.BUILD_PAIRS[major]['CUDA_IMAGE']}" in message


def test_training_image_installs_exactly_the_train_lock() -> None:
    train_df = parse_dockerfile(DOCKER / "Dockerfile.train")
    (install,) = [r for r in train_df.get("RUN", train_df.final_stage) if "pip install" in r]
    assert "--no-deps -r /tmp/train.lock" in install and "pip check" in install
    assert "source=requirements/train.lock,target=/tmp/train.lock" in install
