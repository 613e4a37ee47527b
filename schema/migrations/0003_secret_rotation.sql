-- walhook schema, version 3: secret rotation. rotate_secret() starts a new
-- secret while the old one keeps signing alongside it for 24 hours, so a
-- receiver can switch its verifier without losing a single delivery.

ALTER TABLE walhook.subscriptions
    ADD COLUMN previous_secret text,
    ADD COLUMN previous_secret_until timestamptz;
ALTER TABLE walhook.subscription_log
    ADD COLUMN previous_secret text,
    ADD COLUMN previous_secret_until timestamptz;

-- rotate_secret returns the new secret. A subscription without a secret gets
-- its first one and nothing to overlap with.
CREATE FUNCTION walhook.rotate_secret(id uuid) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fresh text := walhook._check_secret('generate');
BEGIN
    UPDATE walhook.subscriptions s
    SET previous_secret = s.secret,
        previous_secret_until = CASE WHEN s.secret IS NULL THEN NULL ELSE now() + interval '24 hours' END,
        secret = fresh,
        updated_at = now()
    WHERE s.id = rotate_secret.id;
    IF NOT FOUND THEN
        PERFORM walhook._invalid(format('no subscription %s', id));
    END IF;
    RETURN fresh;
END $$;

REVOKE ALL ON FUNCTION walhook.rotate_secret(uuid) FROM PUBLIC;
