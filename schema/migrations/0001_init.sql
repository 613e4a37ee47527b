-- walhook schema, version 1: subscriptions, the events and dialects the installed
-- config offers, the attempt history and the SQL API. Applied by `walhook install`
-- inside one transaction under an advisory lock.

CREATE TABLE walhook.settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE walhook.events (
    name       text PRIMARY KEY,
    table_name text NOT NULL,
    operation  text,              -- insert|update|delete; NULL for none
    derived    boolean NOT NULL DEFAULT false
);

CREATE TABLE walhook.dialects (
    name text PRIMARY KEY
);

CREATE TABLE walhook.subscriptions (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner          text NOT NULL,
    event          text NOT NULL,
    target_url     text NOT NULL,
    site           text NOT NULL DEFAULT '/',
    dialect        text NOT NULL DEFAULT 'default',
    secret         text,
    active         boolean NOT NULL DEFAULT true,
    status_message text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_owner_idx ON walhook.subscriptions (owner);

-- The state of each subscription as the stream last applied it, stamped with the
-- end LSN of the commit that made it. On start walhook loads, per subscription,
-- the newest entry at or before the slot's confirmed LSN: the index as it stood
-- at the point the stream resumes from, so a replayed change is matched against
-- the subscriptions that existed when it committed, not against today's.
-- Not in the publication.
CREATE TABLE walhook.subscription_log (
    id         uuid NOT NULL,
    lsn        pg_lsn NOT NULL,
    deleted    boolean NOT NULL DEFAULT false,
    owner      text,
    event      text,
    target_url text,
    site       text,
    dialect    text,
    secret     text,
    active     boolean,
    PRIMARY KEY (id, lsn)
);

CREATE TABLE walhook.attempts (
    id               bigserial PRIMARY KEY,
    subscription_id  uuid NOT NULL,
    event_id         text NOT NULL,
    event            text NOT NULL,
    attempt          int NOT NULL DEFAULT 1,
    status           text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    response_status  int,
    response_excerpt text,
    error            text,
    target_url       text NOT NULL,
    request_headers  jsonb,
    request_body     bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    duration_ms      int
);
CREATE INDEX attempts_subscription_idx ON walhook.attempts (subscription_id, id);

-- _distance is a plain Levenshtein distance, so that subscribe() can suggest close
-- event names without needing the fuzzystrmatch extension.
CREATE FUNCTION walhook._distance(a text, b text) RETURNS int
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    la int := length(a);
    lb int := length(b);
    prev int[];
    cur int[];
    i int;
    j int;
BEGIN
    IF la = 0 THEN RETURN lb; END IF;
    IF lb = 0 THEN RETURN la; END IF;
    prev := array(SELECT generate_series(0, lb));
    FOR i IN 1..la LOOP
        cur := array[i];
        FOR j IN 1..lb LOOP
            cur := cur || least(
                prev[j + 1] + 1,
                cur[j] + 1,
                prev[j] + CASE WHEN substr(a, i, 1) = substr(b, j, 1) THEN 0 ELSE 1 END);
        END LOOP;
        prev := cur;
    END LOOP;
    RETURN prev[lb + 1];
END $$;

CREATE FUNCTION walhook._invalid(msg text, hint text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF hint IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = msg;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = msg, HINT = hint;
END $$;

-- _check_site returns the normalised site path or raises 22023.
CREATE FUNCTION walhook._check_site(site text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    s text := site;
BEGIN
    IF s IS NULL THEN
        PERFORM walhook._invalid('site must not be NULL', 'use ''/'' for the root site');
    END IF;
    IF length(s) > 1 AND right(s, 1) = '/' THEN
        s := left(s, -1);
    END IF;
    IF s !~ '^/([A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*)?$' THEN
        PERFORM walhook._invalid(format('malformed site %L', site),
            'a site is an absolute path of segments of letters, digits and . _ ~ -, like /acme/east');
    END IF;
    RETURN s;
END $$;

CREATE FUNCTION walhook._check_url(target_url text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    m text[];
    allow_http boolean;
BEGIN
    IF target_url IS NULL OR target_url = '' THEN
        PERFORM walhook._invalid('target_url must not be empty');
    END IF;
    IF target_url ~ '[[:space:][:cntrl:]]' THEN
        PERFORM walhook._invalid(format('malformed target_url %L: it contains white space or control characters', target_url));
    END IF;
    m := regexp_match(target_url, '^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)$');
    IF m IS NULL THEN
        PERFORM walhook._invalid(format('malformed target_url %L: want an absolute URL like https://example.com/hook', target_url));
    END IF;
    IF lower(m[1]) NOT IN ('http', 'https') THEN
        PERFORM walhook._invalid(format('target_url %L: scheme %L is not supported (want https)', target_url, m[1]));
    END IF;
    IF position('@' IN m[2]) > 0 THEN
        PERFORM walhook._invalid('target_url must not contain credentials (user:password@)',
            'pass a secret to subscribe() to have requests signed instead');
    END IF;
    IF m[2] !~ '^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(:[0-9]{1,5})?$' THEN
        PERFORM walhook._invalid(format('malformed target_url %L: bad host %L', target_url, m[2]));
    END IF;
    IF m[3] <> '' AND left(m[3], 1) NOT IN ('/', '?') THEN
        PERFORM walhook._invalid(format('malformed target_url %L', target_url));
    END IF;
    IF position('#' IN m[3]) > 0 THEN
        PERFORM walhook._invalid(format('target_url %L must not contain a fragment', target_url));
    END IF;
    IF lower(m[1]) = 'http' THEN
        SELECT value = 'true' INTO allow_http FROM walhook.settings WHERE key = 'allow_http';
        IF allow_http IS NOT TRUE THEN
            PERFORM walhook._invalid(format('target_url %L: http:// is not allowed by this installation (want https://)', target_url),
                'an operator can allow it with walhook install --allow-http');
        END IF;
    END IF;
    RETURN target_url;
END $$;

CREATE FUNCTION walhook._check_event(event text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    close text;
BEGIN
    IF event IS NULL THEN
        PERFORM walhook._invalid('event must not be NULL');
    END IF;
    IF EXISTS (SELECT 1 FROM walhook.events e WHERE e.name = event) THEN
        RETURN event;
    END IF;
    SELECT string_agg(name, ', ' ORDER BY d, name) INTO close FROM (
        SELECT e.name, walhook._distance(e.name, event) AS d FROM walhook.events e
        ORDER BY d, e.name LIMIT 3) c
    WHERE d <= greatest(3, length(event) / 3);
    IF close IS NULL THEN
        PERFORM walhook._invalid(format('unknown event %L', event),
            (SELECT 'known events: ' || coalesce(string_agg(name, ', ' ORDER BY name), 'none (run walhook install with a config)') FROM walhook.events));
    END IF;
    PERFORM walhook._invalid(format('unknown event %L (did you mean %s?)', event, close));
    RETURN NULL;
END $$;

CREATE FUNCTION walhook._check_secret(secret text) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    raw bytea;
BEGIN
    IF secret IS NULL THEN
        RETURN NULL;
    END IF;
    IF secret = 'generate' THEN
        -- Two random UUIDs give 244 random bits; gen_random_uuid is built in from
        -- PostgreSQL 13, so no pgcrypto is needed.
        raw := decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex');
        RETURN 'whsec_' || encode(raw, 'base64');
    END IF;
    IF left(secret, 6) <> 'whsec_' THEN
        PERFORM walhook._invalid('secret must be ''generate'' or of the form whsec_<base64>');
    END IF;
    BEGIN
        raw := decode(substr(secret, 7), 'base64');
    EXCEPTION WHEN others THEN
        PERFORM walhook._invalid('secret: the part after whsec_ is not valid base64');
    END;
    IF length(raw) < 24 OR length(raw) > 64 THEN
        PERFORM walhook._invalid(format('secret: want 24 to 64 bytes after decoding, got %s', length(raw)));
    END IF;
    RETURN secret;
END $$;

CREATE FUNCTION walhook.subscribe(event text, target_url text, owner text,
                                  site text DEFAULT '/', dialect text DEFAULT 'default',
                                  secret text DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id uuid;
BEGIN
    IF owner IS NULL OR btrim(owner) = '' THEN
        PERFORM walhook._invalid('owner must not be empty');
    END IF;
    IF dialect IS NULL OR NOT EXISTS (SELECT 1 FROM walhook.dialects d WHERE d.name = subscribe.dialect) THEN
        PERFORM walhook._invalid(format('unknown dialect %L', dialect),
            (SELECT 'known dialects: ' || string_agg(name, ', ' ORDER BY name) FROM walhook.dialects));
    END IF;
    INSERT INTO walhook.subscriptions (owner, event, target_url, site, dialect, secret)
    VALUES (owner, walhook._check_event(event), walhook._check_url(target_url),
            walhook._check_site(site), dialect, walhook._check_secret(secret))
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;

CREATE FUNCTION walhook.unsubscribe(id uuid) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH d AS (DELETE FROM walhook.subscriptions s WHERE s.id = unsubscribe.id RETURNING 1)
    SELECT count(*) > 0 FROM d
$$;

CREATE FUNCTION walhook.activate(id uuid) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH u AS (
        UPDATE walhook.subscriptions s SET active = true, status_message = NULL, updated_at = now()
        WHERE s.id = activate.id RETURNING 1)
    SELECT count(*) > 0 FROM u
$$;

CREATE FUNCTION walhook.deactivate(id uuid, reason text DEFAULT 'Deactivated') RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH u AS (
        UPDATE walhook.subscriptions s SET active = false, status_message = reason, updated_at = now()
        WHERE s.id = deactivate.id RETURNING 1)
    SELECT count(*) > 0 FROM u
$$;

CREATE FUNCTION walhook.remove_owner(owner text) RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH d AS (DELETE FROM walhook.subscriptions s WHERE s.owner = remove_owner.owner RETURNING 1)
    SELECT count(*)::int FROM d
$$;

-- set_site makes this transaction's changes also reach the subscribers of the
-- given site and its ancestors. It travels as a transactional logical message, so
-- it arrives in the stream inside the transaction it belongs to, and vanishes
-- with it on rollback.
CREATE FUNCTION walhook.set_site(site text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_logical_emit_message(true, 'walhook.site', walhook._check_site(site));
END $$;

REVOKE ALL ON ALL TABLES IN SCHEMA walhook FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA walhook FROM PUBLIC;
