-- walhook schema, version 2: the durable retry queue, failure counting for
-- automatic deactivation, and redeliver(). None of these tables is in the
-- publication (it names its tables explicitly), so writing them never feeds
-- the stream walhook itself reads.

-- The request of an attempt is kept so redeliver() can send it again as it was.
ALTER TABLE walhook.attempts ADD COLUMN request_method text;

-- A delivery waiting for its next attempt. A row is written in the same
-- transaction as the failed attempt that queued it, so once the slot moves past
-- the change the retry cannot be lost. Processes share the queue: a claim takes
-- due rows with FOR UPDATE SKIP LOCKED and leases them by moving
-- next_attempt_at forward, so a process that dies mid-attempt only delays the
-- row until its lease ends.
CREATE TABLE walhook.deliveries (
    id              bigserial PRIMARY KEY,
    subscription_id uuid NOT NULL,
    event_id        text NOT NULL,
    event           text NOT NULL,
    target_url      text NOT NULL,
    method          text NOT NULL DEFAULT 'POST',
    headers         jsonb,
    body            bytea NOT NULL,
    attempt         int NOT NULL DEFAULT 0,  -- attempts made so far
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    locked_by       text,                    -- the claiming process, for operators
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_due_idx ON walhook.deliveries (next_attempt_at);
CREATE INDEX deliveries_subscription_idx ON walhook.deliveries (subscription_id);

-- Consecutive failed attempts per subscription, kept apart from
-- walhook.subscriptions because that table is in the publication: counting
-- there would put a change into the stream for every failing batch.
CREATE TABLE walhook.subscription_failures (
    subscription_id      uuid PRIMARY KEY,
    consecutive_failures int NOT NULL DEFAULT 0
);

-- activate also starts the failure count afresh and resumes the deliveries
-- the queue parked while the subscription was inactive. The subscription is
-- updated first: the queue parks rows only while holding a share lock on an
-- inactive subscription, so once this UPDATE has its row lock no parking is
-- in flight, and the unparking below (a new snapshot) sees every parked row.
CREATE OR REPLACE FUNCTION walhook.activate(id uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found_it boolean;
BEGIN
    UPDATE walhook.subscriptions s SET active = true, status_message = NULL, updated_at = now()
    WHERE s.id = activate.id;
    found_it := FOUND;
    DELETE FROM walhook.subscription_failures f WHERE f.subscription_id = activate.id;
    UPDATE walhook.deliveries d SET next_attempt_at = now()
    WHERE d.subscription_id = activate.id AND d.next_attempt_at = 'infinity';
    RETURN found_it;
END $$;

-- unsubscribe and remove_owner also drop what the queue and the failure count
-- hold for the removed subscriptions (attempts stay, as history).
CREATE OR REPLACE FUNCTION walhook.unsubscribe(id uuid) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM walhook.deliveries d WHERE d.subscription_id = unsubscribe.id;
    DELETE FROM walhook.subscription_failures f WHERE f.subscription_id = unsubscribe.id;
    WITH d AS (DELETE FROM walhook.subscriptions s WHERE s.id = unsubscribe.id RETURNING 1)
    SELECT count(*) > 0 FROM d
$$;

CREATE OR REPLACE FUNCTION walhook.remove_owner(owner text) RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH s AS (DELETE FROM walhook.subscriptions s WHERE s.owner = remove_owner.owner RETURNING s.id),
         d AS (DELETE FROM walhook.deliveries d USING s WHERE d.subscription_id = s.id),
         f AS (DELETE FROM walhook.subscription_failures f USING s WHERE f.subscription_id = s.id)
    SELECT count(*)::int FROM s
$$;

-- redeliver queues the request of attempt attempt_id again, with the same event
-- id so the receiver can deduplicate, and returns the new delivery's id. It goes
-- out on the next poll of the queue and is retried on the schedule from attempt 1.
CREATE FUNCTION walhook.redeliver(attempt_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO walhook.deliveries (subscription_id, event_id, event, target_url, method, headers, body)
    SELECT a.subscription_id, a.event_id, a.event, a.target_url, coalesce(a.request_method, 'POST'),
           a.request_headers, coalesce(a.request_body, ''::bytea)
    FROM walhook.attempts a WHERE a.id = redeliver.attempt_id
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        PERFORM walhook._invalid(format('unknown attempt id %s', attempt_id),
            'attempt ids are in walhook.attempts, which keeps only the newest attempts of each subscription');
    END IF;
    RETURN new_id;
END $$;

REVOKE ALL ON walhook.deliveries, walhook.subscription_failures FROM PUBLIC;
REVOKE ALL ON FUNCTION walhook.redeliver(bigint) FROM PUBLIC;
