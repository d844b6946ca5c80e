"""Retrying outages: what a handler raises to refuse a record or report an outage, and the backoff loop.

:class:`PoisonRecord` marks a record that can never be processed (it goes to the dead-letter topic);
:class:`TransientError` and :func:`is_transient` name the outages (broker, database, object store,
registry) that are retried with :class:`Backoff` by :func:`retry_transient` and never skip a record.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from driftline.connect import KafkaConnection
from driftline.logging import get_logger
from driftline.serde import RegistryError

log = get_logger(__name__)


class PoisonRecord(Exception):
    """Raised by a handler for a record that can never be processed; it goes to the DLQ."""

    def __init__(self, reason: str, error_type: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_type = error_type


class TransientError(Exception):
    """Raised by a handler for a failure worth retrying (a dependency is down)."""


def is_transient(exc: BaseException) -> bool:
    """Outages that must be retried rather than dead-lettered."""
    if isinstance(exc, TransientError | RegistryError | KafkaConnectionError | KafkaTimeoutError):
        return True
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return True
    try:  # optional dependencies, imported lazily so the module stays light
        import asyncpg

        if isinstance(
            exc,
            asyncpg.PostgresConnectionError
            | asyncpg.InterfaceError
            | asyncpg.CannotConnectNowError
            | asyncpg.TooManyConnectionsError,
        ):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        import urllib3.exceptions

        if isinstance(exc, urllib3.exceptions.HTTPError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, KafkaError) and getattr(exc, "retriable", False)


@dataclass
class Backoff:
    """Exponential backoff with jitter, capped."""

    initial: float = 0.2
    maximum: float = 15.0
    factor: float = 2.0
    _next: float = field(default=0.0, init=False)

    def next_delay(self) -> float:
        self._next = self.initial if self._next == 0 else min(self.maximum, self._next * self.factor)
        return self._next * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self._next = 0.0


async def retry_transient(
    fn: Callable[[], Awaitable[Any]],
    *,
    what: str,
    stopping: Callable[[], bool] = lambda: False,
    backoff: Backoff | None = None,
    on_retry: Callable[[BaseException], None] | None = None,
) -> Any:
    """Call ``fn`` until it succeeds or fails with a non-transient error (which is raised)."""
    backoff = backoff or Backoff()
    while True:
        try:
            return await fn()
        except Exception as exc:
            if not is_transient(exc) or stopping():
                raise
            delay = backoff.next_delay()
            log.warning("transient_failure", what=what, error=repr(exc)[:300], retry_in_s=round(delay, 2))
            if on_retry:
                on_retry(exc)
            await asyncio.sleep(delay)


async def start_client(
    start: Callable[[], Awaitable[Any]],
    kafka: KafkaConnection,
    *,
    what: str,
    stopping: Callable[[], bool] = lambda: False,
) -> Any:
    """Start an aiokafka client, retrying outages, but fail at once with :class:`KafkaRefused`
    when the broker refuses the credentials or the certificate is not trusted (aiokafka reports
    both as an unreachable cluster, which would otherwise be retried for ever)."""

    async def attempt() -> Any:
        try:
            return await start()
        except KafkaConnectionError:
            await kafka.raise_if_refused()
            raise

    return await retry_transient(attempt, what=what, stopping=stopping)
