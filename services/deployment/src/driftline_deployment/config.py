"""Settings of the deployment service (``DRIFTLINE_DEPLOYMENT_…``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from driftline.settings import ServiceSettings


# The ignore is for `mypy --strict services/deployment/src`, where driftline (no py.typed) is Any.
class DeploymentSettings(ServiceSettings):  # type: ignore[misc,unused-ignore]
    model_config = SettingsConfigDict(env_prefix="DRIFTLINE_DEPLOYMENT_", extra="ignore")

    port: int = 38105
    group_id: str = Field("deployment", description="Consumer group of stream scoring (features.vectors).")
    shadow: bool = Field(True, description="Load challengers (action 'shadow') and score them in shadow.")
    max_batch: int = Field(1000, ge=1, description="Most feature vectors accepted by one POST /v1/predict.")
    inline_rows: int = Field(
        64, ge=1, description="HTTP batches up to this size are scored on the event loop; larger ones in a thread."
    )
    score_max_records: int = Field(500, ge=1, description="Most vectors scored in one consumer batch.")
    model_threads: int = Field(
        1,
        ge=0,
        description="OpenMP threads per prediction (OMP_NUM_THREADS unless already set; 0: the runtime's default). "
        "Small batches are dominated by thread start-up and spin-waits, badly so on a busy host.",
    )
    load_in_process: bool = Field(
        True,
        description="Load models in a child process, so a swap never makes requests wait for the GIL "
        "(false: in a worker thread of the service).",
    )
    store_pool_size: int = Field(
        4, ge=1, description="PostgreSQL connections to the online store (raw-event predictions read it)."
    )
    publish_max_pending: int = Field(
        100_000,
        ge=1,
        description="Most HTTP predictions waiting for the broker's acknowledgement; beyond, counted as unpublished.",
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On shutdown, how long to wait for HTTP predictions not yet acknowledged."
    )
    fallback_depth: int = Field(
        5, ge=1, description="At start-up, how many earlier champions to try when the latest one does not load."
    )
