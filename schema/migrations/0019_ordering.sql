-- Per-key ordering (a dialect's ordering: key): deliveries of one row key to
-- one subscription are sent one after another in commit order. A queued
-- delivery with an order_key is claimed only once no delivery of the same
-- subscription and key with an earlier position (order_lsn, order_n, id) is
-- left: a failing one holds back the later events of its key, and only
-- those. order_lsn and order_n are the commit LSN of the change and its
-- position in the transaction; NULL for deliveries sent in any order
-- (retries of unordered dialects, redeliver(), released held deliveries).
ALTER TABLE walhook.deliveries
    ADD COLUMN order_key text,
    ADD COLUMN order_lsn bigint,
    ADD COLUMN order_n   bigint;
CREATE INDEX deliveries_order_idx ON walhook.deliveries (subscription_id, order_key, order_lsn, order_n, id)
    WHERE order_key IS NOT NULL;
