-- Batched deliveries: a dialect with batch: sends many events in one request,
-- recorded as one attempt (event_id is the batch id, event is 'batch') and,
-- when it fails, queued as one delivery retried as a whole. event_ids are the
-- ids of the events the batch carries, in commit order; NULL for a delivery
-- of one event.
ALTER TABLE walhook.attempts ADD COLUMN event_ids text[];
ALTER TABLE walhook.deliveries ADD COLUMN event_ids text[];
