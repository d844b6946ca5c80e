-- Many projects on one install: a vector belongs to a project ('' for vectors stored before
-- projects were data). The latest vector is kept per project, feature-set version and entity:
-- two projects' entities with the same id, or the same version string, never overwrite each other.

ALTER TABLE vectors ADD COLUMN project text NOT NULL DEFAULT '';
ALTER TABLE latest ADD COLUMN project text NOT NULL DEFAULT '';
ALTER TABLE latest DROP CONSTRAINT latest_pkey;
ALTER TABLE latest ADD PRIMARY KEY (project, feature_set_version, entity_id);
DROP INDEX vectors_entity_time;
CREATE INDEX vectors_entity_time ON vectors (project, feature_set_version, entity_id, event_time DESC);
