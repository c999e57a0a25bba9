"""Every corpus entry gets its documented status and a JSON error (no stack trace, no server path),
and the next good request still succeeds: one bad client never breaks the service."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .conftest import MAX_FILES, MAX_UPLOAD_MB, Served
from .corpus import Case, _png, build

CORPUS = build(MAX_FILES, MAX_UPLOAD_MB)
GOOD = _png(64, 64)


def test_the_corpus_is_large_and_varied() -> None:
    assert len(CORPUS) >= 30
    assert len({case.status for case in CORPUS}) >= 6  # 200, 400, 401, 404, 413, 415, 422


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=60) as client:
        yield client


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_corpus_entry(case: Case, client: httpx.Client, served: Served) -> None:
    response = case.send(client, served.headers())
    assert response.status_code == case.status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    text = response.text
    assert "Traceback" not in text and 'File "' not in text and "/site-packages/" not in text
    if case.error is None:
        assert "score" in body or all(
            "score" in r or "status" in r for r in body.get("results", [])
        )
    else:
        assert body["error"] == case.error and body["detail"]
    good = client.post(
        "/predict", files={"file": ("good.png", GOOD, "image/png")}, headers=served.headers()
    )
    assert good.status_code == 200, f"after {case.name!r}: {good.text[:300]}"


def test_server_log_has_no_unhandled_errors(client: httpx.Client, served: Served) -> None:
    for case in CORPUS[:5]:
        case.send(client, served.headers())
    log = served.log.read_text(errors="replace")
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
