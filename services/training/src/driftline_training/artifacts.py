"""A run's object-store calls: content-addressed keys, and calls bounded in time.

Keys name the content's SHA-256, so an object is never replaced by other bytes once announced
(two attempts of one run write two objects). Every call is retried by the store for at most
``timeout_s``; past it the run fails with ``object_store_unavailable`` (retried in place, see
:mod:`driftline_training.runs`), and a refusal fails it with ``object_store_error``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from minio.error import S3Error

from driftline.artifacts import ArtifactRef, ArtifactStore
from driftline_training.pipeline import TrainingFailure

T = TypeVar("T")


def model_key(model_name: str, run_id: str, sha256: str) -> str:
    """Content-addressed: an object is only ever written with the bytes its key names."""
    return f"models/{model_name}/{run_id}/model-{sha256}.skops"


def training_set_key(model_name: str, run_id: str, sha256: str) -> str:
    """The run's examples (Parquet); its SHA-256 is the run's dataset fingerprint."""
    return f"models/{model_name}/{run_id}/training-set-{sha256}.parquet"


def metadata_key(model_name: str, run_id: str, sha256: str) -> str:
    return f"models/{model_name}/{run_id}/metadata-{sha256}.json"


@dataclass
class RunArtifacts:
    """The object store as a run uses it: each call bounded by ``timeout_s`` of retries."""

    store: ArtifactStore
    timeout_s: float = 60.0

    async def put(
        self, key: str, data: bytes, what: str, content_type: str = "application/octet-stream"
    ) -> ArtifactRef:
        return await self._bounded(lambda: self.store.put(key, data, content_type), what)

    async def get(self, key: str, sha256: str, what: str) -> bytes:
        """The object, its SHA-256 checked (ArtifactIntegrityError on a mismatch)."""
        return await self._bounded(lambda: self.store.get(key, sha256), what)

    async def get_json(self, key: str, sha256: str, what: str) -> Any:
        return await self._bounded(lambda: self.store.get_json(key, sha256), what)

    async def _bounded(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        try:
            return await asyncio.wait_for(op(), self.timeout_s)
        except TimeoutError:
            raise TrainingFailure(
                "object_store_unavailable",
                f"the object store did not complete {what} within {self.timeout_s:g}s of retries",
                retryable=True,
            ) from None
        except S3Error as exc:
            raise TrainingFailure("object_store_error", f"the object store refused {what}: {exc}") from None
