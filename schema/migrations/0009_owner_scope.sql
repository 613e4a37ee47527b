-- walhook schema, version 9: owner scoping fails closed, and walhook_admin.
--
-- Before, a walhook_app session that had not set walhook.owner acted for
-- every owner: an application that forgot the setting showed every tenant's
-- subscriptions. Now such a session sees no subscriptions or attempts and
-- every SQL API call that reads or changes one is refused (42501). A role
-- granted walhook_admin acts for every owner, or for one when it sets
-- walhook.owner. Roles granted neither (the installer, the role walhook run
-- uses) are not scoped, as before.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walhook_admin') THEN
        BEGIN
            CREATE ROLE walhook_admin NOLOGIN;
        EXCEPTION
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'walhook: cannot create role walhook_admin (no CREATEROLE); administrators must be granted access by hand';
            WHEN duplicate_object OR unique_violation THEN
                NULL; -- roles are cluster-wide: an install in another database made it just now
        END;
    END IF;
END $$;

-- _scoped says whether this session acts for one owner only: its role is a
-- member of walhook_app and not of walhook_admin. The role is the one the
-- session runs as outside any SECURITY DEFINER function (SET ROLE, else the
-- login), since inside the SQL API current_user is the schema owner.
-- Superusers are members of every role and are never scoped.
CREATE FUNCTION walhook._scoped() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce((
        SELECT NOT r.rolsuper
           AND coalesce(pg_has_role(r.oid, to_regrole('walhook_app'), 'MEMBER'), false)
           AND NOT coalesce(pg_has_role(r.oid, to_regrole('walhook_admin'), 'MEMBER'), false)
        FROM pg_roles r
        WHERE r.rolname = CASE WHEN current_setting('role') = 'none' THEN session_user
                               ELSE current_setting('role') END), false)
$$;

-- _may says whether the session may act for owner: the one it names in
-- walhook.owner, or any when it is not scoped and names none.
CREATE OR REPLACE FUNCTION walhook._may(owner text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN nullif(current_setting('walhook.owner', true), '') IS NOT NULL
                THEN current_setting('walhook.owner', true) = owner
                ELSE NOT walhook._scoped() END
$$;

-- _deny raises 42501 for an act the session may not do, saying how to fix it
-- when the cause is the missing walhook.owner.
CREATE FUNCTION walhook._deny(msg text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF nullif(current_setting('walhook.owner', true), '') IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'walhook.owner is not set: a walhook_app session acts only for the owner it names',
            HINT = 'SET walhook.owner = ''<owner>'' (or set_config(''walhook.owner'', ..., true) per transaction); walhook_admin acts for every owner';
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = msg;
END $$;

CREATE OR REPLACE FUNCTION walhook._guard_subscription() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND NOT walhook._may(OLD.owner) THEN
        PERFORM walhook._deny(format('subscription %s belongs to another owner', OLD.id));
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NOT walhook._may(NEW.owner) THEN
        PERFORM walhook._deny(format('walhook.owner is %L: cannot act for owner %L',
            current_setting('walhook.owner', true), NEW.owner));
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION walhook._guard_delivery() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Only sessions acting for an owner are checked: walhook itself queues
    -- retries, also for a subscription removed a moment ago.
    IF (nullif(current_setting('walhook.owner', true), '') IS NOT NULL OR walhook._scoped()) AND NOT EXISTS (
        SELECT 1 FROM walhook.subscriptions s WHERE s.id = NEW.subscription_id AND walhook._may(s.owner)) THEN
        PERFORM walhook._deny(format('subscription %s belongs to another owner', NEW.subscription_id));
    END IF;
    RETURN NEW;
END $$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walhook_admin') THEN
        RETURN;
    END IF;
    CREATE POLICY admin_owner ON walhook.subscriptions TO walhook_admin USING (walhook._may(owner));
    CREATE POLICY admin_owner ON walhook.attempts TO walhook_admin USING (
        EXISTS (SELECT 1 FROM walhook.subscriptions s WHERE s.id = attempts.subscription_id AND walhook._may(s.owner)));
    GRANT USAGE ON SCHEMA walhook TO walhook_admin;
    GRANT SELECT (id, owner, event, events, target_url, site, dialect, active, status_message, created_at, updated_at,
                  previous_secret_until) ON walhook.subscriptions TO walhook_admin;
    GRANT SELECT ON walhook.attempts, walhook.events, walhook.dialects TO walhook_admin;
    GRANT EXECUTE ON FUNCTION walhook.subscribe(text, text, text, text, text, text),
        walhook.subscribe(text[], text, text, text, text, text), walhook.set_events(uuid, text[]),
        walhook.unsubscribe(uuid), walhook.activate(uuid), walhook.deactivate(uuid, text), walhook.remove_owner(text),
        walhook.redeliver(bigint), walhook.set_site(text), walhook.rotate_secret(uuid), walhook.secret(uuid)
        TO walhook_admin;
END $$;
