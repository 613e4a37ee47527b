-- walhook schema, version 13: the processes running walhook on this
-- database, as each reports itself every few seconds: role, version, and
-- the last failure of its pipeline, so that walhook status can show every
-- process and why one is not streaming.
CREATE TABLE walhook.processes (
    name          text PRIMARY KEY,   -- host:pid:n
    slot          text NOT NULL,
    role          text NOT NULL,      -- starting, standby, leader
    streaming     boolean NOT NULL DEFAULT false,
    version       text NOT NULL,
    started_at    timestamptz NOT NULL,
    seen_at       timestamptz NOT NULL DEFAULT now(),
    restarts      bigint NOT NULL DEFAULT 0,
    last_error    text,
    last_error_at timestamptz
);
