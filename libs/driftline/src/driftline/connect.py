"""How every client reaches the stack: Kafka (TLS, SASL), the schema registry, PostgreSQL and the
object store, built from :class:`driftline.settings.StackSettings` in this one place.

Every aiokafka producer, consumer and admin client takes ``**kafka.client_kwargs()`` (faust's
credentials are made from the same object in the features service); asyncpg takes
:func:`postgres_ssl`; the registry client and the artifact store read their TLS and credentials
through their ``from_settings``.
Secrets stay :class:`pydantic.SecretStr` until the client is built and are never logged.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from aiokafka.errors import KafkaConnectionError, KafkaError
from pydantic import SecretStr

SSL_PROTOCOLS = ("SSL", "SASL_SSL")
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
PgSslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class KafkaRefused(Exception):
    """The broker refused this client's credentials, or its certificate is not trusted: retrying
    cannot help, so this is never treated as an outage."""


def tls_context(
    ca_file: Path | None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    key_password: SecretStr | None = None,
    *,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client TLS context that verifies the server against ``ca_file`` (the system's CAs when
    None), with a client certificate when ``cert_file`` is given (mutual TLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None)
    ctx.check_hostname = check_hostname
    if cert_file is not None:
        ctx.load_cert_chain(
            str(cert_file),
            str(key_file) if key_file else None,
            password=key_password.get_secret_value() if key_password else None,
        )
    return ctx


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how to authenticate to them."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: SecretStr | None = None

    def __str__(self) -> str:  # what messages and logs show: never a secret
        who = f" as {self.sasl_username} ({self.sasl_mechanism})" if self.security_protocol in SASL_PROTOCOLS else ""
        return f"{self.bootstrap_servers} over {self.security_protocol}{who}"

    @cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        if self.security_protocol not in SSL_PROTOCOLS:
            return None
        return tls_context(self.ca_file, self.cert_file, self.key_file, self.key_password)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of an aiokafka producer, consumer or admin client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.ssl_context is not None:
            kwargs["ssl_context"] = self.ssl_context
        if self.security_protocol in SASL_PROTOCOLS:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        return kwargs

    async def raise_if_refused(self) -> None:
        """Raise :class:`KafkaRefused` when the first bootstrap broker refuses this client's
        credentials or presents a certificate the CA does not vouch for.

        aiokafka's bootstrap folds those into "Unable to bootstrap", an outage that would be
        retried for ever; one direct connection tells them apart (aiokafka.conn.create_conn,
        pinned by tests/integration/test_secure_kafka.py)."""
        if self.security_protocol == "PLAINTEXT":
            return
        from aiokafka.conn import create_conn

        host, _, port = self.bootstrap_servers.split(",")[0].strip().rpartition(":")
        kwargs = self.client_kwargs()
        del kwargs["bootstrap_servers"]
        try:
            conn = await create_conn(host, int(port), request_timeout_ms=10000, **kwargs)
        except ssl.SSLCertVerificationError as exc:
            raise KafkaRefused(
                f"TLS to Kafka at {host}:{port} failed: the broker's certificate is not trusted "
                f"(CA file: {self.ca_file or 'the system CAs'}): {exc.verify_message}"
            ) from None
        except ssl.SSLError as exc:
            raise KafkaRefused(f"TLS to Kafka at {host}:{port} failed: {exc}") from None
        except KafkaConnectionError:
            return  # unreachable: an outage, which the caller retries
        except KafkaError as exc:
            if self.security_protocol in SASL_PROTOCOLS:
                raise KafkaRefused(
                    f"Kafka at {host}:{port} refused SASL {self.sasl_mechanism} authentication of user "
                    f"{self.sasl_username!r}: {type(exc).__name__}: {exc}"
                ) from None
            raise
        except OSError:
            return
        conn.close()


def postgres_ssl(sslmode: PgSslMode | None, ca_file: Path | None) -> ssl.SSLContext | PgSslMode | None:
    """asyncpg's ``ssl`` argument for a libpq ``sslmode`` and CA file (None: the DSN decides).

    verify-full checks the chain and the host name, verify-ca the chain only, require encrypts
    without checking (as libpq does without a root certificate)."""
    if sslmode in ("verify-full", "verify-ca"):
        return tls_context(ca_file, check_hostname=sslmode == "verify-full")
    if sslmode == "require" and ca_file is not None:
        return tls_context(ca_file, check_hostname=False)  # libpq: require with a root cert = verify-ca
    return sslmode
