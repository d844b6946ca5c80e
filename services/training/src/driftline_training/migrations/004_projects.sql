-- Many projects on one install: each vector belongs to a project (its features.vectors record's,
-- or the configured project's for a record of no project). Examples are selected per project and
-- feature-set version; labels join by the labelled event's id, which is one project's event.

ALTER TABLE vectors ADD COLUMN project text NOT NULL DEFAULT '';
DROP INDEX vectors_by_time;
CREATE INDEX vectors_by_time ON vectors (project, feature_set_version, event_time DESC, source_event_id DESC);
