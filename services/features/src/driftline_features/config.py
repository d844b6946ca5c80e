"""Settings of the features service (``DRIFTLINE_FEATURES_…``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from driftline.settings import ServiceSettings

NAME = "features"
"""The service's name: its producer name, PostgreSQL schema, faust app id and consumer group (prefixed)."""


class FeaturesSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLINE_FEATURES_", extra="ignore")

    port: int = 38102
    batch_size: int = Field(
        2000,
        ge=1,
        description="Most events computed, produced and stored together (a full batch coalesces more changelog "
        "writes per entity; under a light load a batch is what arrived within batch_wait_s).",
    )
    batch_wait_s: float = Field(0.05, gt=0, description="How long a partial batch waits for more events.")
    chunk_size: int = Field(
        250,
        ge=0,
        description="Events per chunk of a batch: the next chunk is computed while the last one's online-store "
        "write and acknowledgements are awaited (the batch is still acknowledged, and retried, as a whole); "
        "0: a batch in one piece.",
    )
    dedupe_keep: int = Field(
        32, ge=0, description="Events per entity remembered beyond the window horizon, to recognise re-deliveries."
    )
    max_entity_events: int = Field(
        10_000, ge=1, description="Cap on events remembered per entity (a runaway entity's windows become None)."
    )
    commit_interval_s: float = Field(1.0, gt=0, description="How often acknowledged offsets are committed.")
    session_timeout_s: float = Field(
        10.0, gt=0, description="Kafka group session timeout: how long a dead worker holds its partitions."
    )
    heartbeat_interval_s: float = Field(2.0, gt=0)
    rebalance_timeout_s: float = Field(60.0, gt=0)
    changelog_segment_s: float = Field(
        60.0,
        gt=0,
        description="Segment age of the table changelogs (set when faust creates them): the broker compacts "
        "closed segments, so a restart reads about one record per entity plus this long's writes.",
    )
    group_instance_id: str | None = Field(
        None,
        description="Static group membership id (a restart takes its partitions back without a rebalance); "
        "default: features-<host>-<slot>, the slot a per-host lock in the data dir gives each running copy.",
    )
    data_dir: Path | None = Field(None, description="faust's local directory (default: a temp dir per app id).")
    store_pool_size: int = Field(4, ge=1)
    gc_threshold: int = Field(
        50_000,
        ge=0,
        description="Allocations between two young-generation collections of Python's cyclic GC (Python's default: "
        "700; 0 keeps it). The window states are many long-lived lists, so at 700 the collector ran ~100 times a "
        "second and took ~9% of the service's CPU, with full collections of 60-400 ms (README, Benchmark).",
    )
    history_retention_days: float = Field(
        7.0, ge=0, description="Rows of features.vectors (every computed vector) older than this are pruned; 0 keeps."
    )
    faust_log_level: str | None = Field(None, description="Log level of faust, mode and aiokafka (default WARNING).")
    drain_timeout_s: float = Field(20.0, gt=0, description="On SIGTERM, how long the current batch may take.")
