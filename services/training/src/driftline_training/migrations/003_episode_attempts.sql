-- An open drift episode asks for training more than once (monitoring's DriftDetected.attempt):
-- each attempt is its own trigger, drift:<model>:<episode>[:<attempt>].
ALTER TABLE triggers ADD COLUMN IF NOT EXISTS episode_attempt integer NOT NULL DEFAULT 1;
