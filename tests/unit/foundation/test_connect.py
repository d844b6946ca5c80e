"""The stack's security settings become the clients' TLS and SASL arguments, and never leak."""

from __future__ import annotations

import ssl

import certifi
import pytest
from pydantic import ValidationError

from driftline.serde import SchemaRegistryClient
from driftline.settings import StackSettings

SECURE = {
    "kafka_bootstrap_servers": "broker-1:9093,broker-2:9093",
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "driftline",
    "kafka_sasl_password": "s3cr3t-kafka",
    "kafka_ssl_ca_file": certifi.where(),
}


def test_plaintext_by_default() -> None:
    kwargs = StackSettings(kafka_bootstrap_servers="127.0.0.1:1").kafka.client_kwargs()
    assert kwargs == {"bootstrap_servers": "127.0.0.1:1", "security_protocol": "PLAINTEXT"}


def test_sasl_ssl_gives_aiokafka_its_credentials_and_a_verifying_context() -> None:
    kwargs = StackSettings(**SECURE).kafka.client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("driftline", "s3cr3t-kafka")
    ctx = kwargs["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_secrets_are_never_shown() -> None:
    stack = StackSettings(**SECURE, schema_registry_username="u", schema_registry_password="s3cr3t-registry")
    shown = f"{stack!r} {stack} {stack.kafka!r} {stack.kafka}"
    assert "s3cr3t" not in shown
    assert str(stack.kafka) == "broker-1:9093,broker-2:9093 over SASL_SSL as driftline (SCRAM-SHA-512)"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"kafka_sasl_password": None}, "DRIFTLINE_KAFKA_SASL_PASSWORD"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({"kafka_ssl_cert_file": "/x/client.pem"}, "go together"),
        ({"schema_registry_username": "u"}, "go together"),
    ],
)
def test_incomplete_or_unknown_security_settings_are_refused(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StackSettings(**{**SECURE, **extra})


def test_registry_client_uses_basic_auth_and_the_ca() -> None:
    stack = StackSettings(
        schema_registry_username="svc", schema_registry_password="pw", schema_registry_ca_file=certifi.where()
    )
    client = SchemaRegistryClient.from_settings(stack)
    request = client._http.build_request("GET", "https://registry/subjects")
    auth = client._http.auth
    assert auth is not None
    flow = auth.sync_auth_flow(request)
    assert next(flow).headers["Authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    ("mode", "verifies", "checks_host"),
    [("verify-full", True, True), ("verify-ca", True, False)],
)
def test_postgres_verifying_modes_build_a_context(mode: str, verifies: bool, checks_host: bool) -> None:
    ctx = StackSettings(postgres_sslmode=mode, postgres_ssl_ca_file=certifi.where()).postgres_ssl()
    assert isinstance(ctx, ssl.SSLContext)
    assert (ctx.verify_mode == ssl.CERT_REQUIRED) is verifies
    assert ctx.check_hostname is checks_host


def test_postgres_without_sslmode_leaves_it_to_the_dsn() -> None:
    assert StackSettings().postgres_ssl() is None
    assert StackSettings(postgres_sslmode="require").postgres_ssl() == "require"


def test_object_store_over_https_trusts_the_given_ca() -> None:
    from driftline.artifacts import ArtifactStore

    stack = StackSettings(minio_secure=True, minio_ca_file=certifi.where(), minio_endpoint="s3.example:443")
    store = ArtifactStore.from_settings(stack)
    pool = store._client._http
    assert pool.connection_pool_kw["ca_certs"] == certifi.where()
    assert pool.connection_pool_kw["cert_reqs"] == "CERT_REQUIRED"
