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
        1800.0,
        description="Longest a run may take, retries included: past it the run fails with error_type "
        "run_timeout (a fit in progress finishes in the background and is discarded). The run "
        "consumer's max poll interval is set above it.",
    )
    run_attempts: int = Field(
        3, ge=1, description="Attempts of a run that fails with object_store_unavailable, before training.failed."
    )
    retry_backoff_s: float = Field(
        15.0, ge=0, description="Pause before the second attempt of such a run; it doubles for each further one."
    )
    min_comparison_examples: int = Field(
        50,
        ge=1,
        description="Fewest holdout examples after the end of the champion's training data for a "
        "champion comparison; with fewer the run reports no comparison.",
    )
    outbox_interval_s: float = Field(5.0, description="How often unpublished events are re-sent after a crash.")
