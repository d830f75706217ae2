"""The gateway's fakes, and one live stack shared by the security tests that need real processes."""

from collections.abc import Iterator

import pytest

from tests.gateway.conftest import (  # noqa: F401 - fixtures, used by name
    _clean_gateway_env,
    fake_generator,
    fake_retriever,
    gateway,
    make_gateway,
)
from tests.stack import Stack, running_stack


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The three services under gunicorn, data/ ingested, the tiny model writing."""
    from generator_service.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("security-live")
    model = build_tiny_model(root / "model")
    with running_stack(root, model, generator_env={"GENERATOR_MAX_NEW_TOKENS": "8"}) as stack:
        yield stack
