-- Dead letters: records a consumer could not process, kept with the reason until redriven.
CREATE TABLE zq_dead_letters (
    id              integer     PRIMARY KEY AUTOINCREMENT,
    group_name      text        NOT NULL,
    -- `event:<id>` when the record names its event, else `offset:<topic>/<partition>/<offset>`:
    -- the same record dead-lettered again (a redelivery) is one row.
    dedup_key       text        NOT NULL,
    cause           text        NOT NULL,
    reason          text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    record_offset   integer     NOT NULL,
    record_key      blob ,
    payload         blob ,
    headers         text        NOT NULL,
    event_id        text,
    event_type      text,
    position        bigint,
    attempts        integer     NOT NULL,
    first_failed_at text        NOT NULL,
    last_failed_at  text        NOT NULL,
    status          text        NOT NULL,
    redrives        integer     NOT NULL DEFAULT 0,
    mirrored        integer     NOT NULL DEFAULT 0,
    recorded_at     text        NOT NULL,
    resolved_at     text       ,
    UNIQUE (group_name, dedup_key)
);
CREATE INDEX zq_dead_letters_status ON zq_dead_letters (group_name, status);

-- Each consumer group's progress per partition: the log position it has finished, and who
-- reported it when (the heartbeat).
CREATE TABLE zq_consumer_progress (
    group_name   text        NOT NULL,
    partition    integer     NOT NULL,
    position     integer     NOT NULL,
    member       text        NOT NULL,
    heartbeat_at text        NOT NULL,
    PRIMARY KEY (group_name, partition)
);
