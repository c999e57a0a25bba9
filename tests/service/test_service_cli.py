"""``rdad serve`` settings precedence and expected failures (no server started here)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from rdad.cli import build_parser, main
from rdad.commands.serve import _settings


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RDAD_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("RDAD_MAX_DELAY_MS", "9.5")
    monkeypatch.setenv("RDAD_PROVIDERS", "cuda, cpu")
    monkeypatch.setenv("RDAD_API_KEY", "k")
    args = build_parser("serve").parse_args(
        ["serve", "--max-batch-size", "3", "--model-dir", str(tmp_path), "--no-access-log"]
    )
    settings = _settings(args)
    assert settings.max_batch_size == 3  # flag wins
    assert settings.max_delay_ms == 9.5  # environment kept where no flag is given
    assert settings.providers == ["cuda", "cpu"]
    assert settings.model_dir == tmp_path and settings.access_log is False
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k"


def test_invalid_setting_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--max-batch-size", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rdad serve: error: invalid --max-batch-size (RDAD_MAX_BATCH_SIZE)")
    assert "\n" not in err


def test_settings_that_cannot_work_together_say_why_in_their_own_words(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--max-queue", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "max_queue (1) < max_files (16)" in err and "Value error" not in err
    assert "\n" not in err


def test_a_busy_port_is_refused_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # No model folder given: the demo model would be built, were the port not checked first.
        status = main(["serve", "--host", "127.0.0.1", "--port", str(port)])
    err = capsys.readouterr()
    assert status == 1
    assert f"127.0.0.1:{port}" in err.err and "--port" in err.err and "RDAD_PORT" in err.err
    assert "demo" not in err.out + err.err


def test_empty_explicit_model_dir_is_refused_without_polling(tmp_path: Path, capsys) -> None:
    """With polling on (the default) the service starts and waits instead: see
    tests/docker/test_docker_files.py::test_serving_entrypoint_waits_for_models_in_an_empty_folder."""
    assert main(["serve", "--model-dir", str(tmp_path), "--model-poll-s", "0"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path}: no models in the model folder" in err and "RDAD_MODEL_POLL_S" in err
    assert "Traceback" not in err
    assert main(["serve", "--model-dir", str(tmp_path / "nope"), "--model-poll-s", "0"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_serve_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--max-batch-size" in out and "RDAD_" in out


def test_empty_api_key_variable_means_no_key(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from rdad.service.settings import Settings

    monkeypatch.setenv("RDAD_API_KEY", "  ")
    assert Settings().api_key is None


def test_empty_explicit_model_dir_with_polling_starts_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rdad.commands.serve import _ensure_models
    from rdad.service.settings import Settings

    _ensure_models(Settings(model_dir=tmp_path / "models", model_poll_s=5), model_dir_given=True)
    out = capsys.readouterr().out
    assert f"{tmp_path / 'models'}: the model folder does not exist" in out
    assert "loading models as they appear (checked every 5 s)" in out
    assert not (tmp_path / "models").exists()  # no demo model built into an explicit folder


def test_workers_and_their_folder_are_settings(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RDAD_WORKERS", "3")
    args = build_parser("serve").parse_args(["serve", "--run-dir", str(tmp_path)])
    settings = _settings(args)
    assert (settings.workers, settings.run_dir) == (3, tmp_path)
    args = build_parser("serve").parse_args(["serve", "--workers", "2"])
    assert _settings(args).workers == 2  # the flag wins
    assert main(["serve", "--workers", "0"]) == 1
