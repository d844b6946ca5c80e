-- The episode lifecycle: an open episode asks for training again while served performance stays
-- degraded, and once more to consolidate a promotion made on few post-drift examples. Each further
-- request is one DriftDetected (attempt > 1) of the episode, stored before it is published.

CREATE TABLE IF NOT EXISTS episode_attempts (
    episode_id     text NOT NULL REFERENCES drift_reports (episode_id),
    attempt        integer NOT NULL CHECK (attempt > 1),
    event_id       text NOT NULL UNIQUE,
    reason         text NOT NULL,             -- still_degraded | consolidation
    model_version  integer NOT NULL,          -- the champion serving when it was asked
    labelled_since_onset integer NOT NULL,
    record         jsonb NOT NULL,            -- the event as published (re-sent if the publish was lost)
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz,
    PRIMARY KEY (episode_id, attempt)
);

COMMENT ON COLUMN drift_reports.resolution IS 'back_to_normal | attempts_exhausted | model_changed (before episodes spanned models)';
