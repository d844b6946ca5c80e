-- Training keeps its own labelled examples: feature vectors and labels, joined by the raw event id
-- at selection time (whichever arrives first waits in its table). Both are upserts, so a replay of
-- features.vectors or labels changes nothing.
CREATE TABLE vectors (
    source_event_id     text NOT NULL,
    feature_set_version text NOT NULL,
    vector_event_id     text NOT NULL,
    entity_id           text NOT NULL,
    event_time          timestamptz NOT NULL,
    features            jsonb NOT NULL,
    received_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_event_id, feature_set_version)
);
CREATE INDEX vectors_by_time ON vectors (feature_set_version, event_time DESC, source_event_id DESC);

CREATE TABLE labels (
    labelled_event_id text PRIMARY KEY,
    label             text NOT NULL,
    label_event_id    text NOT NULL,
    entity_id         text NOT NULL,
    event_time        timestamptz NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now()
);

-- What training decided for each automatic trigger (a drift episode, the first model): one row
-- per trigger, so a replayed drift event finds its decision instead of deciding again.
CREATE TABLE triggers (
    trigger_id      text PRIMARY KEY,
    kind            text NOT NULL,              -- drift | initial
    model_name      text NOT NULL,
    source_event_id text,                       -- the drift event
    episode_id      text,
    event_time      timestamptz NOT NULL,       -- the drift event's time (cooldown is measured on it)
    decision        text NOT NULL,              -- requested | cooldown | ignored
    reason          text NOT NULL,
    request_id      text,                       -- the latest request made for it
    correlation_id  text,                       -- the drift event's (a retry stays in its chain)
    since           timestamptz,                -- the drift window's start
    attempts        int NOT NULL DEFAULT 1,
    -- Its run failed for lack of labelled examples since the drift: asked again once they exist.
    waiting         boolean NOT NULL DEFAULT false,
    decided_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX triggers_requested ON triggers (model_name, kind, event_time) WHERE decision = 'requested';
CREATE INDEX triggers_waiting ON triggers (trigger_id) WHERE waiting;

-- One row per training request (run_id is derived from the request id: a re-delivered request
-- finds its run here instead of fitting again).
CREATE TABLE runs (
    run_id              text PRIMARY KEY,
    request_id          text NOT NULL UNIQUE,
    request_event_id    text NOT NULL,
    model_name          text NOT NULL,
    status              text NOT NULL,          -- running | succeeded | failed
    reason              text NOT NULL,
    requested_by        text NOT NULL,
    trigger             text NOT NULL,
    drift_episode_id    text,
    correlation_id      text NOT NULL,
    parameters          jsonb NOT NULL DEFAULT '{}',
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    duration_s          double precision,
    metrics             jsonb,
    champion_version    int,
    champion_metrics    jsonb,
    n_train             int,
    n_holdout           int,
    dataset_fingerprint text,
    holdout_fingerprint text,
    artifact_key        text,
    artifact_sha256     text,
    metadata_key        text,
    metadata_sha256     text,
    error_type          text,
    error_reason        text,
    result_event_id     text
);
CREATE INDEX runs_by_start ON runs (started_at DESC);

-- The champion of each model as announced on models.promoted (promote and rollback; shadow
-- deployments are not champions). Runs evaluate it on their holdout.
CREATE TABLE champions (
    model_name        text PRIMARY KEY,
    version           int NOT NULL,
    run_id            text NOT NULL,
    artifact_bucket   text NOT NULL,
    artifact_key      text NOT NULL,
    artifact_sha256   text NOT NULL,
    feature_names     jsonb NOT NULL,
    promoted_event_id text NOT NULL,
    action            text NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- The outbox table (events staged with the state they announce) is created by driftline.outbox.
