-- walhook schema, version 5: attempts and queued deliveries remember their
-- dialect by name. The stored headers leave out anything that looks like a
-- credential (Authorization, ...), so a retry or redelivery takes the
-- dialect's headers from the running config instead of losing them.

ALTER TABLE walhook.attempts ADD COLUMN request_dialect text;
ALTER TABLE walhook.deliveries ADD COLUMN dialect text;

CREATE OR REPLACE FUNCTION walhook.redeliver(attempt_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO walhook.deliveries (subscription_id, event_id, event, target_url, method, headers, body, dialect)
    SELECT a.subscription_id, a.event_id, a.event, a.target_url, coalesce(a.request_method, 'POST'),
           a.request_headers, coalesce(a.request_body, ''::bytea), a.request_dialect
    FROM walhook.attempts a WHERE a.id = redeliver.attempt_id
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        PERFORM walhook._invalid(format('unknown attempt id %s', attempt_id),
            'attempt ids are in walhook.attempts, which keeps only the newest attempts of each subscription');
    END IF;
    RETURN new_id;
END $$;
REVOKE ALL ON FUNCTION walhook.redeliver(bigint) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walhook_app') THEN
        GRANT EXECUTE ON FUNCTION walhook.redeliver(bigint) TO walhook_app;
    END IF;
END $$;
