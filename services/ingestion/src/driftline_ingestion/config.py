"""Settings of the ingestion service (environment variables ``DRIFTLINE_INGESTION_*``)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from driftline.settings import ServiceSettings


# The ignore is for `mypy --strict services/ingestion/src`, where driftline (no py.typed) is Any.
class IngestionSettings(ServiceSettings):  # type: ignore[misc,unused-ignore]
    model_config = SettingsConfigDict(env_prefix="DRIFTLINE_INGESTION_", extra="ignore")

    port: int = 38101
    max_batch: int = Field(1000, ge=1, description="Most records in one request (413 above).")
    max_body_bytes: int = Field(
        1_000_000, ge=1024, le=1_000_000, description="Largest request body (413 above); fits one Kafka record."
    )
    dedupe_horizon_s: float = Field(
        900.0, gt=0, description="How long an accepted event_id is remembered to drop retried duplicates."
    )
    dedupe_max_keys: int = Field(200_000, ge=1, description="Most ids remembered (the oldest go first).")
    max_in_flight: int = Field(
        20_000, ge=1, description="Records sent to Kafka and not yet acknowledged; above it requests get 503."
    )
    max_in_flight_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="Request bytes of the records sent to Kafka and not yet acknowledged; above it requests get "
        "503 (bounds memory whatever the records' size).",
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After of 503 answers.")
    ack_timeout_s: float = Field(30.0, gt=0, description="Longest wait for the broker's acknowledgement (503 after).")
    linger_ms: int = Field(5, ge=0, description="Producer batching delay.")
    producer_batch_bytes: int = Field(256 * 1024, ge=16 * 1024, description="Producer batch size per partition.")

    @model_validator(mode="after")
    def _batch_fits_in_flight(self) -> Self:
        if self.max_batch > self.max_in_flight:
            raise ValueError("max_batch must not exceed max_in_flight (such a batch could never be sent)")
        if self.max_body_bytes > self.max_in_flight_bytes:
            raise ValueError("max_body_bytes must not exceed max_in_flight_bytes (such a body could never be sent)")
        return self
