-- Label corrections are events: every labels record is kept (a correction is a new record, not an
-- edit), with the time training recorded it. A run takes each example's latest label recorded by
-- its start (labels_as_of) and writes which record that was into its training set. The labels
-- table stays as the current label of each event (counts and cooldowns read it).

CREATE TABLE label_events (
    label_event_id text PRIMARY KEY,
    labelled_event_id text NOT NULL,
    label text NOT NULL,
    entity_id text,
    event_time timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX label_events_by_event ON label_events (labelled_event_id, event_time DESC, label_event_id DESC);

-- The labels held before this migration: their current value is all that was kept.
INSERT INTO label_events (label_event_id, labelled_event_id, label, entity_id, event_time)
SELECT label_event_id, labelled_event_id, label, entity_id, event_time FROM labels
ON CONFLICT (label_event_id) DO NOTHING;
