-- How far each named reader of the log (the relay, a projection, a consumer group) has finished.
CREATE TABLE zq_checkpoints (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL CHECK (position >= 0),
    updated_at TEXT    NOT NULL
);
