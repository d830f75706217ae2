"""The gateway's fakes, shared with the fault tests (fixtures are found by name here)."""

from tests.gateway.conftest import (  # noqa: F401 - fixtures, used by name
    _clean_gateway_env,
    fake_generator,
    fake_retriever,
)
