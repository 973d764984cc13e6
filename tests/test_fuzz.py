"""Schemathesis fuzzes every operation of the OpenAPI document: whatever the body, parameters or
image bytes, the service answers with a 2xx/4xx, never a 5xx, and keeps serving."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from serving.ingress import api

EXAMPLES_PER_OPERATION = 20  # bounded: the suite must stay fast; hypothesis shrinks what it finds

# The document the service publishes, built from the same app in this process, so the test
# operations are known when pytest collects them (before the service has started).
schema = schemathesis.openapi.from_dict(api.openapi())


def test_the_fuzzed_document_is_the_served_one(service):
    assert httpx.get(f"{service}/openapi.json").json() == api.openapi()


@pytest.fixture(scope="module")
def healthz(service):
    # One client for the ~900 checks: a new one per check (httpx.get) builds an SSL context each
    # time, which took twice as long as the fuzzed requests themselves.
    with httpx.Client(base_url=service) as http:
        yield lambda: http.get("/healthz").status_code


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case, service, healthz):
    case.call_and_validate(base_url=service, checks=[not_a_server_error], timeout=60)
    assert healthz() == 200
