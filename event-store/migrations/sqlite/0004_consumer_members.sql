-- What each member of a consumer group has done since it started (its counters, saved with its
-- heartbeat): the dashboard's failure rates, whichever process runs the member.
CREATE TABLE zq_consumer_members (
    group_name    text    NOT NULL,
    member        text    NOT NULL,
    processed     integer NOT NULL,
    failed        integer NOT NULL,
    retried       integer NOT NULL,
    dead_lettered integer NOT NULL,
    heartbeat_at  text    NOT NULL,
    PRIMARY KEY (group_name, member)
);
