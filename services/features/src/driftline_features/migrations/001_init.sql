-- The features service's online store (schema "features").
--
-- vectors: every vector computed, one row per vector event_id (= derived from the raw event id
--          and the feature-set version): a replay is a no-op. Pruned after a retention period.
-- latest:  the latest vector per entity and feature-set version, by event time (ties: the one
--          computed later, i.e. the higher source offset); an older, out-of-order vector never
--          overwrites a newer one. GET /v1/features/{entity_id} serves it.

CREATE TABLE vectors (
    event_id            text PRIMARY KEY,
    source_event_id     text        NOT NULL,
    entity_id           text        NOT NULL,
    feature_set_version text        NOT NULL,
    event_time          timestamptz NOT NULL,
    features            jsonb       NOT NULL,
    late                boolean     NOT NULL DEFAULT false,
    correlation_id      text        NOT NULL,
    source_partition    integer     NOT NULL,
    source_offset       bigint      NOT NULL,
    written_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vectors_entity_time ON vectors (feature_set_version, entity_id, event_time DESC);
CREATE INDEX vectors_written_at ON vectors (written_at);

CREATE TABLE latest (
    feature_set_version text        NOT NULL,
    entity_id           text        NOT NULL,
    event_id            text        NOT NULL,
    source_event_id     text        NOT NULL,
    event_time          timestamptz NOT NULL,
    features            jsonb       NOT NULL,
    late                boolean     NOT NULL DEFAULT false,
    correlation_id      text        NOT NULL,
    source_partition    integer     NOT NULL,
    source_offset       bigint      NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (feature_set_version, entity_id)
);
