"""Settings of the monitoring service (``DRIFTLINE_MONITORING_…``).

Thresholds and windows are the project file's drift policy; these are the service's own knobs.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from driftline.settings import ServiceSettings


# Checked alone (mypy --strict services/monitoring/src) driftline has no py.typed, so ServiceSettings is Any.
class MonitoringSettings(ServiceSettings):  # type: ignore[misc,unused-ignore]
    model_config = SettingsConfigDict(env_prefix="DRIFTLINE_MONITORING_", extra="ignore")

    port: int = 38106
    group_id: str = Field("monitoring", description="Consumer group of features.vectors, predictions and labels.")
    resolve_after: int = Field(3, ge=1, description="Consecutive clean checks that end a drift episode.")
    join_capacity: int = Field(
        50_000, ge=100, description="Predictions (per model) and labels kept waiting for their other half."
    )
    max_records: int = Field(500, ge=1, description="Most records handled per consumer batch.")
    touch_every_s: float = Field(
        5.0,
        ge=0,
        description="An open episode's last detection time is written at most this often (and at each check).",
    )
    page_checks: int = Field(120, ge=10, description="Checks plotted per model on the HTML page.")
