"""The artifact store: objects in MinIO/S3 addressed by key and verified by SHA-256.

Writers record the digest next to the key (in the event that announces the artifact); readers
give that digest back and get the bytes only when they match, so a tampered or truncated object
is refused before anything is loaded from it. Training writes models and metadata under keys
that contain their SHA-256 (content-addressed), so an object, once announced, is never replaced
by different bytes: two attempts of the same run write two objects.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import urllib3
from minio import Minio
from minio.error import S3Error

from driftline import jsonsafe
from driftline.retry import retry_transient


class ArtifactIntegrityError(Exception):
    """The object's bytes do not match the digest its announcement carries."""


class ArtifactNotFound(Exception):
    """No object under that key."""


@dataclass(frozen=True)
class ArtifactRef:
    bucket: str
    key: str
    sha256: str
    size: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_bytes(doc: Any) -> bytes:
    """A JSON document as the bytes :meth:`ArtifactStore.put_json` stores (sorted keys), e.g. to
    compute its digest first and store it under a content-addressed key."""
    return jsonsafe.dumps(doc, sort_keys=True, default=str).encode()


class ArtifactStore:
    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        ca_file: str | None = None,
    ) -> None:
        self.bucket = bucket
        http_client = None
        if ca_file is not None:  # https verified against this CA instead of the system's
            http_client = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=60, read=300),
                maxsize=10,
                cert_reqs="CERT_REQUIRED",
                ca_certs=ca_file,
                retries=urllib3.Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            )
        self._client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, http_client=http_client
        )

    @classmethod
    def from_settings(cls, stack: Any) -> ArtifactStore:
        return cls(
            stack.minio_endpoint,
            stack.minio_access_key,
            stack.minio_secret_key.get_secret_value(),
            stack.artifact_bucket,
            secure=stack.minio_secure,
            ca_file=str(stack.minio_ca_file) if stack.minio_ca_file else None,
        )

    async def ensure_bucket(self) -> None:
        def make() -> None:
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except S3Error as exc:  # created concurrently
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

        await retry_transient(lambda: asyncio.to_thread(make), what="object store bucket")

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ArtifactRef:
        digest = sha256_hex(data)

        def put() -> None:
            self._client.put_object(
                self.bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
                metadata={"sha256": digest},
            )

        await retry_transient(lambda: asyncio.to_thread(put), what=f"put {key}")
        return ArtifactRef(self.bucket, key, digest, len(data))

    async def put_json(self, key: str, doc: Any) -> ArtifactRef:
        return await self.put(key, json_bytes(doc), "application/json")

    async def get_unverified(self, key: str) -> bytes:
        def get() -> bytes:
            try:
                resp = self._client.get_object(self.bucket, key)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    raise ArtifactNotFound(f"no object {self.bucket}/{key}") from exc
                raise
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        data: bytes = await retry_transient(lambda: asyncio.to_thread(get), what=f"get {key}")
        return data

    async def get(self, key: str, sha256: str) -> bytes:
        """The object's bytes, only if their SHA-256 is ``sha256``."""
        data = await self.get_unverified(key)
        actual = sha256_hex(data)
        if actual != sha256.lower():
            raise ArtifactIntegrityError(
                f"artifact {self.bucket}/{key} has SHA-256 {actual}, expected {sha256}: refusing it"
            )
        return data

    async def get_json(self, key: str, sha256: str) -> Any:
        return json.loads(await self.get(key, sha256))

    async def ping(self) -> None:
        await asyncio.wait_for(asyncio.to_thread(self._client.bucket_exists, self.bucket), timeout=5)
