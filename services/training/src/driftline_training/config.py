"""Settings of the training service (``DRIFTLINE_TRAINING_…``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from driftline.settings import ServiceSettings


class TrainingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLINE_TRAINING_", extra="ignore")

    port: int = 38103
    object_store_timeout_s: float = Field(
        60.0,
        description="How long a run keeps retrying the object store before it fails "
        "with error_type object_store_unavailable.",
    )
    max_run_seconds: float = Field(
        1800.0, description="Longest a run may take; the consumer's max poll interval is set above it."
    )
    outbox_interval_s: float = Field(5.0, description="How often unpublished events are re-sent after a crash.")
