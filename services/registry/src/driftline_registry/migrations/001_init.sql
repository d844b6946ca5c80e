-- The registry: models, their versions (one per training run, numbered per model), the stage
-- history (every promotion, rejection, rollback, shadow deployment and what deployment reported),
-- and the outbox of the events it announces.
CREATE TABLE models (
    name               text PRIMARY KEY,
    champion_version   int,
    challenger_version int,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE versions (
    model_name          text NOT NULL REFERENCES models (name),
    version             int NOT NULL,
    run_id              text NOT NULL UNIQUE,
    stage               text NOT NULL,   -- candidate | champion | challenger | rejected | archived | rolled_back
    trained_event_id    text NOT NULL,
    correlation_id      text NOT NULL,
    artifact_bucket     text NOT NULL,
    artifact_key        text NOT NULL,
    artifact_sha256     text NOT NULL,
    metadata_key        text NOT NULL,
    metadata_sha256     text NOT NULL,
    metrics             jsonb NOT NULL,
    champion_metrics    jsonb,
    evaluated_against   int,             -- champion version the run compared itself with
    dataset_fingerprint text NOT NULL,
    holdout_fingerprint text NOT NULL,
    feature_set_version text NOT NULL,
    feature_names       jsonb NOT NULL,
    params              jsonb NOT NULL,
    n_train             int NOT NULL,
    n_holdout           int NOT NULL,
    duration_s          double precision NOT NULL,
    trigger             text NOT NULL,
    drift_episode_id    text,
    training_request_id text,
    trained_at          timestamptz NOT NULL,
    registered_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, version)
);

CREATE TABLE history (
    id               bigserial PRIMARY KEY,
    event_id         text NOT NULL UNIQUE,  -- the event that announces (or reports) the change
    model_name       text NOT NULL,
    version          int,
    action           text NOT NULL,         -- registered | promote | reject | rollback | shadow | deployment
    previous_version int,
    actor            text NOT NULL,
    reason           text NOT NULL,
    details          jsonb NOT NULL DEFAULT '{}',
    correlation_id   text,
    at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX history_by_model ON history (model_name, id);

-- The outbox table (events staged with the state they announce) is created by driftline.outbox.
