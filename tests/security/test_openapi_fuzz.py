"""Schemathesis against the gateway's and the retriever's OpenAPI descriptions, on a live stack.

Requests generated from each operation's schema (valid ones, and ones made invalid on purpose)
go to real gunicorn processes, with the keys a client would hold. Every answer must not be a
5xx, must carry a status the description lists, in a content type it lists, with a body that
matches the schema of that status. Bounded: a fixed number of examples per operation, drawn
deterministically so that a CI failure reproduces.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import API_VERSION, OPERATIONS
from qa_common.openapi import build_openapi
from retriever_service.api_spec import openapi_document
from tests.stack import ADMIN_KEY, INTERNAL_KEY, Stack

pytestmark = pytest.mark.slow
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 20
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)

retriever_schema = schemathesis.openapi.from_dict(openapi_document())
gateway_schema = schemathesis.openapi.from_dict(
    build_openapi(OPERATIONS, title="grounded-qa gateway", version=API_VERSION)
)


@retriever_schema.parametrize()
@FUZZ
def test_the_retriever_answers_every_generated_request_as_described(case: Any, live: Stack) -> None:
    case.call_and_validate(
        base_url=live.retriever.url,
        headers={"Authorization": f"Bearer {INTERNAL_KEY}"},
        checks=CHECKS,
        timeout=120,
    )


@gateway_schema.parametrize()
@FUZZ
def test_the_gateway_answers_every_generated_request_as_described(case: Any, live: Stack) -> None:
    case.call_and_validate(
        base_url=live.url,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        checks=CHECKS,
        timeout=120,
    )


def test_the_descriptions_fuzzed_are_the_ones_served(live: Stack) -> None:
    import requests

    retriever = requests.get(
        f"{live.retriever.url}/openapi.json",
        headers={"Authorization": f"Bearer {INTERNAL_KEY}"},
        timeout=30,
    )
    assert retriever.json() == openapi_document()
    gateway = requests.get(f"{live.url}/openapi.json", timeout=30)
    assert gateway.json()["paths"].keys() == gateway_schema.raw_schema["paths"].keys()
