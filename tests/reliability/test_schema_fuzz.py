"""Fuzz every operation of the OpenAPI schema with schemathesis against a real server.

For each operation of the service's schema, schemathesis generates requests
that fit it (positive) and requests that break it (negative: wrong types,
missing or extra fields, out-of-range numbers, odd strings), and hypothesis
sends ``EXAMPLES`` of them to a running server. Every response must be a
non-5xx, with a status code the schema lists for that operation, a declared
content type and headers, and a body that validates against the declared
schema. Requests carry the admin key, so the admin routes are exercised past
their authentication (a generated ``path`` never names a publishable expert).

The schema comes from the app itself at collection time (one pytest case per
operation, named by it); the requests go to the real server. (Schemathesis'
own pytest plugin is not used: it does not run under pytest 9.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.api.main import create_app
from app.settings import Settings
from tests.app.service.conftest import ADMIN, ADMIN_KEY, ServerProcess
from tests.reliability.conftest import forked_server

EXAMPLES = 60  # per operation, about half of them valid, half not
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
SCHEMA = schemathesis.openapi.from_dict(create_app(Settings(data_dir=Path("unused"))).openapi())
OPERATIONS = {operation.label: operation for operation in (result.ok() for result in SCHEMA.get_all_operations())}


@pytest.fixture(scope="module")
def fuzzed_server(
    template_root: Path, tiny_bert_path: Path, tiny_cross_encoder_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = {"RR_RERANKER": str(tiny_cross_encoder_path)}  # with one, valid rerank requests are answered, not a 501
    with forked_server(template_root, tiny_bert_path, tmp_path_factory.mktemp("fuzz"), env=env) as server:
        yield server
    assert ADMIN_KEY not in server.log_path.read_text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_no_server_errors_and_responses_match_the_schema(label: str, fuzzed_server: ServerProcess, figures) -> None:
    operation = OPERATIONS[label]
    sent: dict[int, int] = {}
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call(base_url=fuzzed_server.url, headers=ADMIN, timeout=30)
        sent[response.status_code] = sent.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS, headers=ADMIN)

    fuzz()
    figures(requests=sum(sent.values()), statuses=dict(sorted(sent.items())))
