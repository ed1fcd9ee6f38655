"""Schemathesis over the OpenAPI document: no generated request makes the server fail (5xx).

Every operation gets property-based requests (path, query, bodies) from Schemathesis' strategies,
sent over real HTTP by a signed-in platform admin (who passes every permission check, so the
handlers themselves are exercised) to a node holding one small study. Any 5xx fails the test
with the request that caused it.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from imaging_cloud.synthetic import StudySpec, ct_series, to_part10
from tests.support.servers import auth_headers, http_base, running_node

EXAMPLES = int(os.environ.get("IMAGING_CLOUD_FUZZ_EXAMPLES", "12"))


def _fuzz(operation: Any, headers: dict[str, str]) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        response = case.call(headers=headers, timeout=30)
        case.validate_response(response, checks=[not_a_server_error])

    run()


@pytest.mark.slow  # heavy: CI runs it, the quick local run leaves it out
def test_no_generated_request_is_a_server_error(tmp_path: Any) -> None:
    with running_node(tmp_path / "node") as node:
        for ds in ct_series(StudySpec(), slices=2, size=16):
            node.archive.store(to_part10(ds), source="fuzz")
        schema = schemathesis.openapi.from_url(f"{http_base(node)}/openapi.json")
        headers = auth_headers(node)
        failures = []
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) > 30  # the whole API is described, not a stub
        for operation in operations:
            try:
                _fuzz(operation, headers)
            except Exception as exc:  # collect all, report together
                failures.append(f"{operation.label}: {exc}")
        if failures:
            pytest.fail("\n\n".join(failures))
