-- walhook schema, version 6: a queued delivery remembers when its change
-- committed, so the commit-to-delivery latency counts retries too.
ALTER TABLE walhook.deliveries ADD COLUMN committed_at timestamptz;
