-- Attempts of a run (a restart after a crash, a retry after an outage), the fair champion
-- comparison (on the holdout examples the champion did not train on), and where the champion's
-- metadata is (it records the end of the champion's training data).
ALTER TABLE runs ADD COLUMN attempts int NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN comparison_metrics jsonb;      -- the candidate on the comparison set
ALTER TABLE runs ADD COLUMN n_comparison int;              -- holdout examples in the comparison set
ALTER TABLE champions ADD COLUMN metadata_key text;
ALTER TABLE champions ADD COLUMN metadata_sha256 text;
-- since: the start of the examples a drift-triggered run trains on (the onset when the drift
-- event gives one, else the drifted window's start).
COMMENT ON COLUMN triggers.since IS 'drift onset when given, else the drifted window start';
