-- walhook schema, version 4: access for applications. An application role
-- granted walhook_app calls the SQL API and reads subscriptions, attempts and
-- events. When a session sets walhook.owner (SET walhook.owner = 'user-42',
-- or set_config('walhook.owner', ..., true) per transaction), it sees, changes
-- and removes only that owner's subscriptions and attempts; without it, it
-- acts for every owner. Secrets are never readable through the tables, only
-- through walhook.secret(id) by the subscription's own owner. The schema's
-- owner (the installer) sees everything.

-- _may says whether the session may act for owner.
CREATE FUNCTION walhook._may(owner text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('walhook.owner', true), ''), owner) = owner
$$;

-- The SQL API runs as the schema owner (SECURITY DEFINER), so row-level
-- security does not reach inside it; this trigger holds every path that
-- writes subscriptions to the session's owner.
CREATE FUNCTION walhook._guard_subscription() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND NOT walhook._may(OLD.owner) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('subscription %s belongs to another owner', OLD.id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NOT walhook._may(NEW.owner) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('walhook.owner is %L: cannot act for owner %L',
                current_setting('walhook.owner', true), NEW.owner);
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER guard_owner BEFORE INSERT OR UPDATE OR DELETE ON walhook.subscriptions
    FOR EACH ROW EXECUTE FUNCTION walhook._guard_subscription();

CREATE FUNCTION walhook._guard_delivery() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Only sessions acting for an owner are checked: walhook itself queues
    -- retries, also for a subscription removed a moment ago.
    IF nullif(current_setting('walhook.owner', true), '') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM walhook.subscriptions s WHERE s.id = NEW.subscription_id AND walhook._may(s.owner)) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('subscription %s belongs to another owner', NEW.subscription_id);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER guard_owner BEFORE INSERT ON walhook.deliveries
    FOR EACH ROW EXECUTE FUNCTION walhook._guard_delivery();

-- secret returns a subscription's secret to its owner only: the session must
-- have set walhook.owner to it.
CREATE FUNCTION walhook.secret(id uuid) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
BEGIN
    SELECT owner, secret INTO s FROM walhook.subscriptions WHERE subscriptions.id = secret.id;
    IF NOT FOUND OR coalesce(current_setting('walhook.owner', true), '') <> s.owner THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'a secret is readable only by its owner: set walhook.owner to the subscription''s owner';
    END IF;
    RETURN s.secret;
END $$;

ALTER TABLE walhook.subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE walhook.attempts ENABLE ROW LEVEL SECURITY;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walhook_app') THEN
        BEGIN
            CREATE ROLE walhook_app NOLOGIN;
        EXCEPTION
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'walhook: cannot create role walhook_app (no CREATEROLE); applications must be granted access by hand';
                RETURN;
            WHEN duplicate_object OR unique_violation THEN
                NULL; -- roles are cluster-wide: an install in another database made it just now
        END;
    END IF;
    CREATE POLICY app_owner ON walhook.subscriptions TO walhook_app USING (walhook._may(owner));
    CREATE POLICY app_owner ON walhook.attempts TO walhook_app USING (
        EXISTS (SELECT 1 FROM walhook.subscriptions s WHERE s.id = attempts.subscription_id AND walhook._may(s.owner)));
    GRANT USAGE ON SCHEMA walhook TO walhook_app;
    GRANT SELECT (id, owner, event, target_url, site, dialect, active, status_message, created_at, updated_at,
                  previous_secret_until) ON walhook.subscriptions TO walhook_app;
    GRANT SELECT ON walhook.attempts, walhook.events, walhook.dialects TO walhook_app;
    GRANT EXECUTE ON FUNCTION walhook.subscribe(text, text, text, text, text, text), walhook.unsubscribe(uuid),
        walhook.activate(uuid), walhook.deactivate(uuid, text), walhook.remove_owner(text),
        walhook.redeliver(bigint), walhook.set_site(text), walhook.rotate_secret(uuid), walhook.secret(uuid)
        TO walhook_app;
END $$;

REVOKE ALL ON FUNCTION walhook.secret(uuid) FROM PUBLIC;
