-- walhook schema, version 11: ping() sends a walhook.ping event to a
-- subscription now, and redeliver_failed() re-queues what failed since a
-- time. Both queue rows in walhook.deliveries, which the running walhook's
-- queue sends and records as attempts like any other.

-- _subscription_for returns subscription id for the session to act on: it
-- must exist (22023) and belong to an owner the session may act for (42501).
CREATE FUNCTION walhook._subscription_for(id uuid) RETURNS walhook.subscriptions
LANGUAGE plpgsql STABLE AS $$
DECLARE
    s walhook.subscriptions;
BEGIN
    SELECT * INTO s FROM walhook.subscriptions x WHERE x.id = _subscription_for.id;
    IF NOT FOUND THEN
        PERFORM walhook._invalid(format('no subscription %s', id));
    END IF;
    IF NOT walhook._may(s.owner) THEN
        PERFORM walhook._deny(format('subscription %s belongs to another owner', id));
    END IF;
    RETURN s;
END $$;

-- ping queues a walhook.ping event for subscription id and returns the
-- delivery's id. The body is the default dialect's envelope, whatever the
-- subscription's dialect (whose headers it does get), with the
-- subscription's id as its data:
--   {"id":"<event id>","event":"walhook.ping","occurred_at":"<now>","site":"/",
--    "data":{"subscription_id":"<id>"}}
-- An inactive subscription is refused: the queue would park the ping.
CREATE FUNCTION walhook.ping(id uuid) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s walhook.subscriptions := walhook._subscription_for(ping.id);
    ev text := gen_random_uuid()::text;
    new_id bigint;
BEGIN
    IF NOT s.active THEN
        PERFORM walhook._invalid(format('subscription %s is inactive (%s): activate it first', s.id, coalesce(s.status_message, 'no reason given')));
    END IF;
    INSERT INTO walhook.deliveries (subscription_id, event_id, event, target_url, method, body, dialect)
    VALUES (s.id, ev, 'walhook.ping', s.target_url, 'POST',
            convert_to(format('{"id":%s,"event":"walhook.ping","occurred_at":%s,"site":%s,"data":{"subscription_id":%s}}',
                to_json(ev), to_json(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
                to_json(s.site), to_json(s.id::text)), 'UTF8'),
            s.dialect)
    RETURNING deliveries.id INTO new_id;
    RETURN new_id;
END $$;

-- redeliver_failed re-queues, for subscription id, every event whose newest
-- attempt still in the history failed at or after since, and is not already
-- queued; it returns how many. Each goes out with its event id, so a
-- receiver can deduplicate, and is retried on the schedule from attempt 1.
CREATE FUNCTION walhook.redeliver_failed(id uuid, since timestamptz) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s walhook.subscriptions := walhook._subscription_for(redeliver_failed.id);
    n int;
BEGIN
    IF since IS NULL THEN
        PERFORM walhook._invalid('since must not be NULL', 'use ''-infinity'' for every failed attempt in the history');
    END IF;
    INSERT INTO walhook.deliveries (subscription_id, event_id, event, target_url, method, headers, body, dialect)
    SELECT a.subscription_id, a.event_id, a.event, a.target_url, coalesce(a.request_method, 'POST'),
           a.request_headers, coalesce(a.request_body, ''::bytea), a.request_dialect
    FROM (SELECT DISTINCT ON (x.event_id) x.* FROM walhook.attempts x
          WHERE x.subscription_id = s.id ORDER BY x.event_id, x.id DESC) a
    WHERE a.status = 'failed' AND a.created_at >= since
      AND NOT EXISTS (SELECT 1 FROM walhook.deliveries d WHERE d.subscription_id = s.id AND d.event_id = a.event_id);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

REVOKE ALL ON FUNCTION walhook.ping(uuid), walhook.redeliver_failed(uuid, timestamptz) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walhook_app') THEN
        GRANT EXECUTE ON FUNCTION walhook.ping(uuid), walhook.redeliver_failed(uuid, timestamptz) TO walhook_app;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walhook_admin') THEN
        GRANT EXECUTE ON FUNCTION walhook.ping(uuid), walhook.redeliver_failed(uuid, timestamptz) TO walhook_admin;
    END IF;
END $$;
