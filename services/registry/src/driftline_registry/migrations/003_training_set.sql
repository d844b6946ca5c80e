-- What each version was trained on (models.trained's training-set fields): the training-set
-- artifact, its size, the event-time range of its examples and the labels' cut-off, and the code
-- version of the run. Null for a version trained before runs recorded them.
ALTER TABLE versions
    ADD COLUMN training_set_key text,
    ADD COLUMN training_set_sha256 text,
    ADD COLUMN training_set_size bigint,
    ADD COLUMN labels_as_of timestamptz,
    ADD COLUMN train_start timestamptz,
    ADD COLUMN holdout_end timestamptz,
    ADD COLUMN code_version text;
