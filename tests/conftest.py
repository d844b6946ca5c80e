"""Fixtures shared by every test layer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from driftline.settings import StackSettings
from tests.support import Namespace, create_namespace, drop_namespace


@pytest.fixture(scope="session")
def base_stack() -> StackSettings:
    """Connection settings of the running stack (the test stack under `make test`)."""
    return StackSettings()


@pytest.fixture
async def namespace(base_stack: StackSettings) -> AsyncIterator[Namespace]:
    """A fresh, isolated slice of the stack: topics (with schemas), a database and a bucket."""
    ns = await create_namespace(base_stack)
    yield ns
    await drop_namespace(ns, base_stack)
