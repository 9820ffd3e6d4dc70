-- The global log. SQLite has one writer at a time, so positions are dense and committed in order
-- as they are allocated (max + 1 inside the write transaction).
CREATE TABLE zq_events (
    position       INTEGER PRIMARY KEY,
    event_id       BLOB    NOT NULL UNIQUE,
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL CHECK (stream_version > 0),
    event_type     TEXT    NOT NULL,
    data           TEXT    NOT NULL,
    correlation_id BLOB,
    causation_id   BLOB,
    partition_key  TEXT,
    trace_context  TEXT,
    occurred_at    TEXT    NOT NULL,
    recorded_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (stream_id, stream_version)
);
