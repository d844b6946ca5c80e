"""Settings: one pydantic-settings class per service, sharing the stack's connection settings.

The stack's connection settings use the ``DRIFTLINE_`` prefix (``DRIFTLINE_KAFKA_BOOTSTRAP_SERVERS``…).
A local stack started by ``make up`` writes them to ``<state dir>/stack.env``; that file is read
when present, and real environment variables always win. Each service adds its own class with
its own prefix (``DRIFTLINE_INGESTION_PORT``…) and reaches the shared ones through ``.stack``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_POSTGRES_PASSWORD = "driftline-local"  # noqa: S105 - the documented local-mode default
LOCAL_MINIO_SECRET = "driftline-local-secret"  # noqa: S105 - the documented local-mode default
LOCAL_API_TOKEN = "driftline-local-token"  # noqa: S105 - the documented local-mode default


def repo_root() -> Path | None:
    """The checkout this code runs from, if it runs from one (None in an installed image)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "schemas" / "topics.yaml").is_file() and (parent / "Makefile").is_file():
            return parent
    return None


def find_stack_env() -> Path | None:
    """Where the local stack wrote its connection settings, if anywhere.

    Order: ``$DRIFTLINE_STACK_ENV``; ``$DRIFTLINE_STATE_DIR/stack.env``; ``.state/dev/stack.env``
    in the checkout.
    """
    explicit = os.environ.get("DRIFTLINE_STACK_ENV")
    if explicit:
        return Path(explicit)
    state = os.environ.get("DRIFTLINE_STATE_DIR")
    if state:
        return Path(state) / "stack.env"
    root = repo_root()
    if root is not None and (root / ".state" / "dev" / "stack.env").is_file():
        return root / ".state" / "dev" / "stack.env"
    return None


class StackSettings(BaseSettings):
    """Connections to Kafka, the schema registry, PostgreSQL and the object store."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLINE_", extra="ignore")

    local_mode: bool = Field(True, description="Allow the insecure local defaults for secrets.")
    kafka_bootstrap_servers: str = "127.0.0.1:39090"
    schema_registry_url: str = "http://127.0.0.1:39092/apis/ccompat/v7"
    postgres_dsn: SecretStr = SecretStr(f"postgresql://driftline:{LOCAL_POSTGRES_PASSWORD}@127.0.0.1:39093/driftline")
    minio_endpoint: str = "127.0.0.1:39094"
    minio_access_key: str = "driftline"
    minio_secret_key: SecretStr = SecretStr(LOCAL_MINIO_SECRET)
    minio_secure: bool = False
    artifact_bucket: str = "driftline-artifacts"
    topic_prefix: str = Field(
        "", description="Prefix of every physical topic and subject name (isolates tests or tenants)."
    )
    topic_replication_factor: int | None = Field(
        None,
        ge=1,
        description="Replication factor of the topics `driftline stack init` creates, instead of the catalog's "
        "(which suits a one-broker local stack); e.g. 3 on a production cluster.",
    )
    project_file: Path | None = Field(
        None, description="Project file (YAML); default: examples/loan_approval/project.yaml of the checkout."
    )
    api_tokens: SecretStr = Field(
        SecretStr(""),
        description="Bearer tokens of the write endpoints: comma-separated `actor=token` pairs (a bare token "
        "gets the actor `api`). Empty in local mode: the well-known local token is accepted.",
    )
    log_level: str = "INFO"
    log_format: str = Field("json", description="json (default) or console for humans.")

    def __init__(self, **values: Any) -> None:
        env_file = find_stack_env()
        if env_file is not None and env_file.is_file():
            values.setdefault("_env_file", env_file)
        super().__init__(**values)

    @model_validator(mode="after")
    def _no_local_secrets_in_production(self) -> Self:
        if not self.local_mode:
            dsn = self.postgres_dsn.get_secret_value()
            if LOCAL_POSTGRES_PASSWORD in dsn or self.minio_secret_key.get_secret_value() == LOCAL_MINIO_SECRET:
                raise ValueError(
                    "DRIFTLINE_LOCAL_MODE=false but a local-mode default secret is in use: set "
                    "DRIFTLINE_POSTGRES_DSN and DRIFTLINE_MINIO_SECRET_KEY"
                )
        return self


class ServiceSettings(BaseSettings):
    """Base of every service's settings: where it listens, plus the stack connections."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    instance_id: str = Field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")
    stack: StackSettings = Field(default_factory=StackSettings)
