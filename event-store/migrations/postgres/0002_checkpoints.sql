-- How far each named reader of the log (the relay, a projection, a consumer group) has finished.
CREATE TABLE zq_checkpoints (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL
);
