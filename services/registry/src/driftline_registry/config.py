"""Settings of the registry service (``DRIFTLINE_REGISTRY_…``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from driftline.settings import ServiceSettings


# The ignore is for `mypy --strict services/registry/src`, where driftline (no py.typed) is Any.
class RegistrySettings(ServiceSettings):  # type: ignore[misc,unused-ignore]
    model_config = SettingsConfigDict(env_prefix="DRIFTLINE_REGISTRY_", extra="ignore")

    port: int = 38104
    group_id: str = Field(
        "registry",
        description="Consumer group; a new one replays models.trained from the beginning, which with an "
        "empty schema rebuilds the registry (decisions, manual ones included, come from models.promoted "
        "and models.rejected, read back at every start).",
    )
    outbox_interval_s: float = Field(5.0, description="How often unpublished events are re-sent after a crash.")
