-- The registry's own decisions as they are on models.promoted and models.rejected. The registry
-- reads those topics back (from the beginning, at every start), so that a registry rebuilt from
-- the log restores what operators did (promote, shadow, rollback) and never re-announces a
-- decision that is already there. A decision not yet applied here (applied = false) waits for
-- its version to be registered from models.trained; decisions apply in the order they were made.
CREATE TABLE decisions (
    event_id    text PRIMARY KEY,
    topic       text NOT NULL,             -- models.promoted | models.rejected
    model_name  text NOT NULL,
    version     int NOT NULL,
    run_id      text NOT NULL,
    action      text NOT NULL,             -- promote | rollback | shadow | reject
    actor       text NOT NULL,
    event_time  timestamptz NOT NULL,      -- when the registry made the decision
    kafka_partition int NOT NULL,
    kafka_offset    bigint NOT NULL,
    record      jsonb NOT NULL,
    applied     boolean NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX decisions_pending ON decisions (model_name, event_time) WHERE NOT applied;
CREATE INDEX decisions_by_run ON decisions (model_name, run_id);

-- The fair comparison of a run (models.trained): the candidate's metrics on the holdout examples
-- the champion did not train on, and how many there were.
ALTER TABLE versions ADD COLUMN comparison_metrics jsonb;
ALTER TABLE versions ADD COLUMN n_comparison int;
CREATE INDEX history_by_time ON history (model_name, at, id);
