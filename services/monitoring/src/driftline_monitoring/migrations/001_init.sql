-- Monitoring's state: one summary per check of a model's windows, and one report per drift episode.

CREATE TABLE IF NOT EXISTS window_summaries (
    check_id       text PRIMARY KEY,          -- derived from model, version and the window's last record
    model_name     text NOT NULL,
    model_version  integer NOT NULL,
    computed_at    timestamptz NOT NULL DEFAULT now(),
    window_start   timestamptz,
    window_end     timestamptz,
    window_size    integer NOT NULL,
    records_seen   bigint NOT NULL,
    drifted        boolean NOT NULL,
    kind           text,                      -- kind of the drift found by this check, if any
    features       jsonb NOT NULL,            -- feature -> {psi, ks, p_value, ks_threshold, drifted}
    score          jsonb,                     -- {psi, ks, p_value, window_size, drifted}
    performance    jsonb NOT NULL             -- rolling accuracy, reference, Page-Hinkley, labelled count
);
CREATE INDEX IF NOT EXISTS window_summaries_model_time ON window_summaries (model_name, computed_at DESC);

CREATE TABLE IF NOT EXISTS drift_reports (
    episode_id     text PRIMARY KEY,
    event_id       text NOT NULL UNIQUE,      -- the DriftDetected event announcing the episode
    model_name     text NOT NULL,
    model_version  integer NOT NULL,
    kind           text NOT NULL,
    method         text NOT NULL,
    statistic      double precision NOT NULL,
    threshold      double precision NOT NULL,
    features       text[] NOT NULL,
    window_start   timestamptz NOT NULL,
    window_end     timestamptz NOT NULL,
    window_size    integer NOT NULL,
    evidence       jsonb NOT NULL,
    record         jsonb NOT NULL,            -- the event as published (re-sent if the publish was lost)
    detected_at    timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz,
    last_seen_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at    timestamptz,
    resolution     text                       -- back_to_normal | model_changed
);
CREATE INDEX IF NOT EXISTS drift_reports_model_time ON drift_reports (model_name, detected_at DESC);
-- At most one open episode per model, whichever instance detects it.
CREATE UNIQUE INDEX IF NOT EXISTS drift_reports_one_open ON drift_reports (model_name) WHERE resolved_at IS NULL;
