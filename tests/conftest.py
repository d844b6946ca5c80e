"""Fixtures shared by every test layer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from driftline.settings import StackSettings
from tests.support import Namespace, broker_down_reason, create_namespace, drop_namespace


@pytest.fixture(scope="session")
def base_stack() -> StackSettings:
    """Connection settings of the running stack (the test stack under `make test`)."""
    return StackSettings()


@pytest.fixture
async def namespace(base_stack: StackSettings) -> AsyncIterator[Namespace]:
    """A fresh, isolated slice of the stack: topics (with schemas), a database and a bucket.

    A broker that is gone for good ends the session at once, with its log's tail: every later
    test would otherwise spend a minute retrying it and hide the cause under its own failure."""
    down = broker_down_reason(base_stack)
    if down is not None:
        pytest.exit(down, returncode=1)
    ns = await create_namespace(base_stack)
    yield ns
    await drop_namespace(ns, base_stack)
