"""Settings: one pydantic-settings class per service, sharing the stack's connection settings.

The stack's connection settings use the ``DRIFTLINE_`` prefix (``DRIFTLINE_KAFKA_BOOTSTRAP_SERVERS``…).
A local stack started by ``make up`` writes them to ``<state dir>/stack.env``; that file is read
when present, and real environment variables always win. Each service adds its own class with
its own prefix (``DRIFTLINE_INGESTION_PORT``…) and reaches the shared ones through ``.stack``.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from driftline.connect import SASL_PROTOCOLS, SSL_PROTOCOLS, KafkaConnection, PgSslMode, postgres_ssl

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
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_file: Path | None = Field(
        None, description="CA bundle the brokers' certificates chain to (default: the system CAs)."
    )
    kafka_ssl_cert_file: Path | None = Field(None, description="Client certificate (PEM), for mutual TLS.")
    kafka_ssl_key_file: Path | None = Field(None, description="Private key (PEM) of the client certificate.")
    kafka_ssl_key_password: SecretStr | None = None
    schema_registry_url: str = "http://127.0.0.1:39092/apis/ccompat/v7"
    schema_registry_username: str | None = Field(None, description="HTTP basic auth user of the schema registry.")
    schema_registry_password: SecretStr | None = None
    schema_registry_ca_file: Path | None = Field(
        None, description="CA bundle of an https registry (default: system CAs)."
    )
    postgres_dsn: SecretStr = SecretStr(f"postgresql://driftline:{LOCAL_POSTGRES_PASSWORD}@127.0.0.1:39093/driftline")
    postgres_sslmode: PgSslMode | None = Field(
        None, description="libpq sslmode; None leaves it to the DSN (`?sslmode=…`)."
    )
    postgres_ssl_ca_file: Path | None = Field(None, description="CA bundle of the server (verify-ca, verify-full).")
    minio_endpoint: str = "127.0.0.1:39094"
    minio_access_key: str = "driftline"
    minio_secret_key: SecretStr = SecretStr(LOCAL_MINIO_SECRET)
    minio_secure: bool = Field(False, description="https to the object store (S3: true).")
    minio_ca_file: Path | None = Field(
        None, description="CA bundle of the object store over https (default: system CAs)."
    )
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

    @property
    def kafka(self) -> KafkaConnection:
        """How every Kafka client of this stack connects (see :mod:`driftline.connect`)."""
        return KafkaConnection(
            self.kafka_bootstrap_servers,
            self.kafka_security_protocol,
            self.kafka_sasl_mechanism,
            self.kafka_sasl_username,
            self.kafka_sasl_password,
            self.kafka_ssl_ca_file,
            self.kafka_ssl_cert_file,
            self.kafka_ssl_key_file,
            self.kafka_ssl_key_password,
        )

    def postgres_ssl(self) -> ssl.SSLContext | PgSslMode | None:
        """asyncpg's ``ssl`` argument (see :func:`driftline.connect.postgres_ssl`)."""
        return postgres_ssl(self.postgres_sslmode, self.postgres_ssl_ca_file)

    @model_validator(mode="after")
    def _security_settings_complete(self) -> Self:
        if self.kafka_security_protocol in SASL_PROTOCOLS and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"DRIFTLINE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "DRIFTLINE_KAFKA_SASL_USERNAME and DRIFTLINE_KAFKA_SASL_PASSWORD"
            )
        if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
            raise ValueError("DRIFTLINE_KAFKA_SSL_CERT_FILE and DRIFTLINE_KAFKA_SSL_KEY_FILE go together")
        if self.kafka_ssl_cert_file is not None and self.kafka_security_protocol not in SSL_PROTOCOLS:
            raise ValueError("a Kafka client certificate needs DRIFTLINE_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL")
        if (self.schema_registry_username is None) != (self.schema_registry_password is None):
            raise ValueError("DRIFTLINE_SCHEMA_REGISTRY_USERNAME and DRIFTLINE_SCHEMA_REGISTRY_PASSWORD go together")
        return self

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
