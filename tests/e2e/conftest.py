"""End-to-end tests need the real stack: run them with `make test-e2e` (or `make test`)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from driftline.settings import StackSettings, find_stack_env
from tests.support import Namespace, OtlpCollector, ServiceProcess, running_services


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


@pytest.fixture
def collector() -> Iterator[OtlpCollector]:
    """The six services' spans, exported to it over OTLP/HTTP by the standard OTEL_* variables."""
    collector = OtlpCollector()
    yield collector
    collector.close()


@pytest.fixture
async def services(namespace: Namespace, collector: OtlpCollector) -> AsyncIterator[dict[str, ServiceProcess]]:
    """The six services as real processes on the test's namespace, tracing to ``collector``."""
    async with running_services(namespace, collector.env()) as procs:
        yield procs
