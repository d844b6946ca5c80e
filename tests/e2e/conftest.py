"""End-to-end tests need the real stack: run them with `make test-e2e` (or `make test`)."""

from __future__ import annotations

import socket

import pytest

from driftline.settings import StackSettings, find_stack_env


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def _stack_is_up() -> None:
    s = StackSettings()
    host, port = s.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        pytest.fail(
            f"no Kafka broker at {s.kafka_bootstrap_servers} (stack env: {find_stack_env()}): "
            "run end-to-end tests with `make test-e2e`, which starts the test stack",
            pytrace=False,
        )
