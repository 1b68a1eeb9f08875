"""Schemathesis over the server's own OpenAPI schema, in process through its ASGI interface: whatever request the
schema allows (and many it does not), the answer is never a 5xx, a 4xx says what was wrong, and /health stays up.

`MMCLF_FUZZ_EXAMPLES` sets the examples per operation (default 100; derandomised, so CI runs are repeatable)."""

import os
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from starlette.testclient import TestClient

from mmclf import MultimodalPipeline
from mmclf.serve import create_app

FIXTURE = Path(__file__).parent / "fixtures" / "pipeline_v0_1"
EXAMPLES = int(os.environ.get("MMCLF_FUZZ_EXAMPLES", "100"))
STATUSES: Counter = Counter()  # (method path, status) of every fuzzed request


@pytest.fixture(scope="module")
def app():
    pipeline = MultimodalPipeline.from_pretrained(FIXTURE / "pipeline")
    return create_app(pipeline, image_root=FIXTURE / "images", max_rows=8, max_request_bytes=200_000,
                      max_text_chars=2000, max_wait_ms=0)


@pytest.fixture(scope="module")
def api(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error_and_health_stays_up(case, app):
    response = case.call()
    STATUSES[f"{case.method} {case.path}", response.status_code] += 1
    case.validate_response(response, checks=[not_a_server_error])
    if 400 <= response.status_code < 500:
        assert response.json()["detail"], response.text
    assert TestClient(app).get("/health").json()["status"] == "ok"


def test_the_fuzzer_reached_the_model_and_the_checks():
    """Run after the fuzzing above: valid listings were predicted (200) and invalid ones refused (4xx)."""
    predict = {status: count for (route, status), count in STATUSES.items() if route == "POST /predict"}
    print(sorted(STATUSES.items()))
    assert predict.get(200, 0) >= 5 and sum(n for status, n in predict.items() if 400 <= status < 500) >= 20, STATUSES
