-- What each member of a consumer group has done since it started (its counters, saved with its
-- heartbeat): the dashboard's failure rates, whichever process runs the member.
CREATE TABLE zq_consumer_members (
    group_name    text        NOT NULL,
    member        text        NOT NULL,
    processed     bigint      NOT NULL,
    failed        bigint      NOT NULL,
    retried       bigint      NOT NULL,
    dead_lettered bigint      NOT NULL,
    heartbeat_at  timestamptz NOT NULL,
    PRIMARY KEY (group_name, member)
);
