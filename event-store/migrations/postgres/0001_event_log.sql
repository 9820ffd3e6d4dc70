-- The global log. Positions are dense and committed in order: every append takes the row lock on
-- zq_log_head first and holds it until it commits, so no position can commit after a higher one,
-- and a rolled-back append gives its positions back (the head update rolls back with it).
CREATE TABLE zq_log_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position  bigint  NOT NULL
);
INSERT INTO zq_log_head (singleton, position) VALUES (true, 0);

CREATE TABLE zq_events (
    position       bigint      PRIMARY KEY,
    event_id       uuid        NOT NULL UNIQUE,
    stream_id      text        NOT NULL,
    stream_version bigint      NOT NULL CHECK (stream_version > 0),
    event_type     text        NOT NULL,
    -- json, not jsonb: the store never looks inside, and keeps the text exactly as appended.
    data           json        NOT NULL,
    correlation_id uuid,
    causation_id   uuid,
    partition_key  text,
    trace_context  text,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL,
    UNIQUE (stream_id, stream_version)
);
