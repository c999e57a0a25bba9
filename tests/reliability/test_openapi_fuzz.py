"""schemathesis against the served OpenAPI schema: generated requests (bounded) never get a 5xx,
and every answer matches the schema (status documented, body shape, content type).

Driven through plain Hypothesis (``operation.as_strategy()``) rather than schemathesis's pytest
plugin, which does not support the pytest version in the lock file.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import Served

MAX_EXAMPLES = 25  # per operation: bounded so that CI stays short on two shared cores
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_api_conforms_to_its_schema(served: Served) -> None:
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /predict", "POST /models/{name}/predict", "GET /healthz"} <= labels
    calls: dict[str, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=served.url, headers=served.headers(), timeout=60)
            label = case.operation.label
            calls[label] = calls.get(label, 0) + 1
            case.validate_response(response, checks=CHECKS)

        check()
    assert set(calls) == labels  # every operation was really exercised
