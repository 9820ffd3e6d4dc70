-- Generation numbers that only grow, kept in the database so that no other server (an RDB
-- restore of Redis, a process that missed a switch) can bring back an older one: the hold store's
-- rebuilds fence their writers with one (DESIGN.md, "Redis is rebuildable").
CREATE TABLE zq_generations (
    name       text   NOT NULL PRIMARY KEY,
    generation bigint NOT NULL
);
