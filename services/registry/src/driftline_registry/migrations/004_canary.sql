-- A challenger deployed as a canary serves this share of the model's entities (models.promoted,
-- action canary); null for a challenger in shadow, or no challenger.
ALTER TABLE models ADD COLUMN canary_fraction double precision;
