-- walhook schema, version 10: static subscriptions, declared under
-- `subscriptions:` in walhook.yaml. install and run reconcile them (schema.Reconcile):
-- rows carry their config name in static_name, and the SQL API refuses to
-- change or remove them, since the next reconcile would undo it. activate()
-- still resumes one deactivated by a 410 or by failures, as long as the
-- config declares it; removed from the config, it is deactivated with
-- _static_removed() as its status message, and may then be unsubscribed.

ALTER TABLE walhook.subscriptions ADD COLUMN static_name text UNIQUE;

CREATE FUNCTION walhook._static_removed() RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'Deactivated: no longer declared under subscriptions: in the config'
$$;

-- _refuse_static raises 22023 when subscription id is static. A static one
-- no longer declared may be removed (allow_removed), but not changed.
CREATE FUNCTION walhook._refuse_static(id uuid, action text, allow_removed boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    s record;
BEGIN
    SELECT static_name, active, status_message INTO s FROM walhook.subscriptions x WHERE x.id = _refuse_static.id;
    IF s.static_name IS NULL THEN
        RETURN;
    END IF;
    IF allow_removed AND NOT s.active AND s.status_message = walhook._static_removed() THEN
        RETURN;
    END IF;
    PERFORM walhook._invalid(format('cannot %s subscription %s: it is static, declared as %L under subscriptions: in the walhook config',
        action, id, s.static_name), 'change the config and run walhook install (or restart walhook run)');
END $$;

CREATE OR REPLACE FUNCTION walhook.unsubscribe(id uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    PERFORM walhook._refuse_static(unsubscribe.id, 'remove', true);
    DELETE FROM walhook.deliveries d WHERE d.subscription_id = unsubscribe.id;
    DELETE FROM walhook.subscription_failures f WHERE f.subscription_id = unsubscribe.id;
    DELETE FROM walhook.subscriptions s WHERE s.id = unsubscribe.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n > 0;
END $$;

-- _resume starts the failure count of an activated subscription afresh and
-- resumes the deliveries the queue parked while it was inactive. Call it
-- after the UPDATE that activates: see activate in 0002_queue.sql.
CREATE FUNCTION walhook._resume(id uuid) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM walhook.subscription_failures f WHERE f.subscription_id = _resume.id;
    UPDATE walhook.deliveries d SET next_attempt_at = now()
    WHERE d.subscription_id = _resume.id AND d.next_attempt_at = 'infinity';
$$;

-- activate resumes a static subscription only while the config declares it.
CREATE OR REPLACE FUNCTION walhook.activate(id uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found_it boolean;
BEGIN
    IF EXISTS (SELECT 1 FROM walhook.subscriptions s WHERE s.id = activate.id AND s.static_name IS NOT NULL
               AND NOT s.active AND s.status_message = walhook._static_removed()) THEN
        PERFORM walhook._refuse_static(activate.id, 'activate');
    END IF;
    UPDATE walhook.subscriptions s SET active = true, status_message = NULL, updated_at = now()
    WHERE s.id = activate.id;
    found_it := FOUND;
    PERFORM walhook._resume(activate.id);
    RETURN found_it;
END $$;

CREATE OR REPLACE FUNCTION walhook.deactivate(id uuid, reason text DEFAULT 'Deactivated') RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM walhook._check_length('reason', reason, 1000);
    PERFORM walhook._refuse_static(deactivate.id, 'deactivate');
    UPDATE walhook.subscriptions s SET active = false, status_message = reason, updated_at = now()
    WHERE s.id = deactivate.id;
    RETURN FOUND;
END $$;

CREATE OR REPLACE FUNCTION walhook.set_events(id uuid, events text[]) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    checked text[] := walhook._check_events(set_events.events);
BEGIN
    PERFORM walhook._refuse_static(set_events.id, 'change the events of');
    UPDATE walhook.subscriptions s SET events = checked, updated_at = now()
    WHERE s.id = set_events.id;
    RETURN FOUND;
END $$;

CREATE OR REPLACE FUNCTION walhook.rotate_secret(id uuid) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fresh text := walhook._check_secret('generate');
BEGIN
    PERFORM walhook._refuse_static(rotate_secret.id, 'rotate the secret of');
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

-- remove_owner leaves an owner's static subscriptions, which the config
-- owns: an owner deleted from the application (owners.remove_on_delete)
-- must not make walhook fail on them. It returns how many it removed. It
-- checks the owner up front: an owner with no subscriptions would otherwise
-- answer 0 to a session that may not ask.
CREATE OR REPLACE FUNCTION walhook.remove_owner(owner text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    PERFORM walhook._check_length('owner', remove_owner.owner, 200);
    IF NOT walhook._may(remove_owner.owner) THEN
        PERFORM walhook._deny(format('walhook.owner is %L: cannot act for owner %L',
            current_setting('walhook.owner', true), remove_owner.owner));
    END IF;
    WITH s AS (DELETE FROM walhook.subscriptions s WHERE s.owner = remove_owner.owner AND s.static_name IS NULL RETURNING s.id),
         d AS (DELETE FROM walhook.deliveries d USING s WHERE d.subscription_id = s.id),
         f AS (DELETE FROM walhook.subscription_failures f USING s WHERE f.subscription_id = s.id)
    SELECT count(*)::int INTO n FROM s;
    RETURN n;
END $$;

-- _declare_static creates or updates the static subscription name, checking
-- its values as subscribe() does, and returns 'created', 'updated' or ''
-- (unchanged). A new secret keeps the old one signing for 24 hours, as
-- rotate_secret() does. A subscription that changed, or that comes back to
-- the config, is active again; one deactivated by delivery (410, failures)
-- and unchanged stays as it is.
CREATE FUNCTION walhook._declare_static(name text, events text[], target_url text, owner text,
                                        site text, dialect text, secret text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ev text[] := walhook._check_events(events);
    url text := walhook._check_url(target_url);
    st text := walhook._check_site(site);
    sec text := walhook._check_secret(nullif(secret, ''));
    old record;
BEGIN
    IF owner IS NULL OR btrim(owner) = '' THEN
        PERFORM walhook._invalid('owner must not be empty');
    END IF;
    IF sec = 'generate' OR secret = 'generate' THEN
        PERFORM walhook._invalid('secret: a static subscription takes a whsec_ secret, not ''generate'' (it would change at every reconcile)');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM walhook.dialects d WHERE d.name = _declare_static.dialect) THEN
        PERFORM walhook._invalid(format('unknown dialect %L', dialect),
            (SELECT 'known dialects: ' || string_agg(d.name, ', ' ORDER BY d.name) FROM walhook.dialects d));
    END IF;
    SELECT * INTO old FROM walhook.subscriptions s WHERE s.static_name = _declare_static.name FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO walhook.subscriptions (static_name, owner, events, target_url, site, dialect, secret)
        VALUES (name, owner, ev, url, st, dialect, sec);
        RETURN 'created';
    END IF;
    IF old.owner = owner AND old.events = ev AND old.target_url = url AND old.site = st AND old.dialect = dialect
       AND old.secret IS NOT DISTINCT FROM sec
       AND NOT (NOT old.active AND old.status_message = walhook._static_removed()) THEN
        RETURN '';
    END IF;
    UPDATE walhook.subscriptions s SET owner = _declare_static.owner, events = ev, target_url = url, site = st,
        dialect = _declare_static.dialect, secret = sec,
        previous_secret = CASE WHEN old.secret IS DISTINCT FROM sec AND old.secret IS NOT NULL THEN old.secret ELSE s.previous_secret END,
        previous_secret_until = CASE WHEN old.secret IS DISTINCT FROM sec THEN
            CASE WHEN old.secret IS NULL OR sec IS NULL THEN NULL ELSE now() + interval '24 hours' END
            ELSE s.previous_secret_until END,
        active = true, status_message = NULL, updated_at = now()
    WHERE s.id = old.id;
    PERFORM walhook._resume(old.id);
    RETURN 'updated';
END $$;
-- Only the installer and the role walhook run uses (install --run-role
-- grants it) reconcile: run does so at start.
REVOKE ALL ON FUNCTION walhook._declare_static(text, text[], text, text, text, text, text) FROM PUBLIC;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walhook_app') THEN
        GRANT SELECT (static_name) ON walhook.subscriptions TO walhook_app;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walhook_admin') THEN
        GRANT SELECT (static_name) ON walhook.subscriptions TO walhook_admin;
    END IF;
END $$;
