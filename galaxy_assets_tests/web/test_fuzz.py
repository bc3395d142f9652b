"""Property-based fuzz of the HTTP API from its own OpenAPI description (schemathesis): for
every operation, positive and negative examples; no answer may be a 5xx, and every error is
the JSON ``{"error", "detail"}`` shape."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from galaxy_assets.web.app import create_app

EXAMPLES = 25


def _check(case, response) -> None:
    where = f"{case.method} {case.formatted_path} {case.query} {str(case.body)[:200]}"
    assert response.status_code < 500, f"{response.status_code} for {where}: {response.text}"
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "detail"}, where
        assert isinstance(body["error"], str) and body["error"], where
        assert "Traceback" not in response.text


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_5xx(survey_engine, tmp_path, rater, mode):
    app = create_app(
        survey_engine,
        rater=rater,
        thumbnail_dir=tmp_path / "thumbs",
        max_upload_bytes=100_000,
        refresh_seconds=None,
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/api/search",
        "/api/search/image",
        "/api/galaxy/{object_id}",
        "/api/galaxy/{object_id}/thumbnail",
    }
    fuzzed = []
    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case) -> None:
            _check(case, case.call())

        try:
            run()
        except Unsatisfiable:
            # nothing to make invalid (an operation without parameters): positive mode covers it
            assert mode is GenerationMode.NEGATIVE, operation.path
            continue
        fuzzed.append(operation.path)
    assert {"/api/search", "/api/search/image", "/api/galaxy/{object_id}/thumbnail"} <= set(fuzzed)
