-- Each entity's window state (the faust table's value) as of the last durable batch, so that
-- deployment's POST /v1/predict can compute a raw event's windowed features exactly as the stream
-- would (driftline_ml.online: the same code writes, reads and folds it). Keyed like the faust
-- table (project, unit separator, entity id); an older state (lower offset on the same partition)
-- never replaces a newer one.

CREATE TABLE entity_windows (
    state_key        text PRIMARY KEY,
    state            jsonb       NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
