-- walhook schema, version 7: bounded inputs. Every text argument of the SQL API
-- has a length limit, checked before any other work, so that no input can pin a
-- backend (a 1 MB unknown event name in the close-match search) or reach an
-- index with a key too large for it (a 1 MB owner). Target URLs must have a
-- port in 1-65535 and a plain ASCII host, neither percent-encoded nor
-- internationalised (the punycode xn-- form is accepted); sites must not have
-- '.' or '..' segments.
--
-- The limits, in characters:
--   event 200, owner 200, dialect 64, site 1000, target_url 2048,
--   secret 1024, reason 1000.

-- _check_length raises 22023 naming the argument and its limit. The value
-- itself is left out of the message: it may be a megabyte. It raises by
-- itself rather than through _invalid, and stays executable by everyone,
-- because the trigger below also runs it for walhook's own run role, which
-- has table privileges only.
CREATE FUNCTION walhook._check_length(arg text, val text, max_chars int) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF length(val) > max_chars THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('%s is too long: %s characters, the limit is %s', arg, length(val), max_chars);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION walhook._check_site(site text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    s text := site;
BEGIN
    IF s IS NULL THEN
        PERFORM walhook._invalid('site must not be NULL', 'use ''/'' for the root site');
    END IF;
    PERFORM walhook._check_length('site', s, 1000);
    IF length(s) > 1 AND right(s, 1) = '/' THEN
        s := left(s, -1);
    END IF;
    IF s !~ '^/([A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*)?$' THEN
        PERFORM walhook._invalid(format('malformed site %L', site),
            'a site is an absolute path of segments of letters, digits and . _ ~ -, like /acme/east');
    END IF;
    -- A site is matched segment by segment against the paths rows carry,
    -- which are cleaned first: '/a/../b' would never match anything.
    IF s ~ '/\.\.?(/|$)' THEN
        PERFORM walhook._invalid(format('malformed site %L: ''.'' and ''..'' segments are not allowed', site),
            'write the path without them, like /acme/east');
    END IF;
    RETURN s;
END $$;

CREATE OR REPLACE FUNCTION walhook._check_url(target_url text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    m text[];
    host text;
    port text;
    allow_http boolean;
BEGIN
    IF target_url IS NULL OR target_url = '' THEN
        PERFORM walhook._invalid('target_url must not be empty');
    END IF;
    PERFORM walhook._check_length('target_url', target_url, 2048);
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
    -- Converting an internationalised name to punycode takes IDNA's Unicode
    -- mapping tables, which PL/pgSQL does not have; a partial conversion could
    -- send requests to a different host than the one meant. [ -~] is printable
    -- ASCII; control characters were refused above.
    IF m[2] ~ '[^ -~]' THEN
        PERFORM walhook._invalid(format('target_url %L: host %L is not ASCII; pass its punycode (xn--) form', target_url, m[2]),
            'e.g. https://xn--bcher-kva.example/ for bücher.example; Python prints it with ''bücher.example''.encode(''idna'')');
    END IF;
    IF position('%' IN m[2]) > 0 THEN
        PERFORM walhook._invalid(format('target_url %L: a percent-encoded host is not supported', target_url),
            'write the host as plain ASCII letters, digits, dots and dashes (the punycode xn-- form for an internationalised name)');
    END IF;
    IF m[2] !~ '^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]+)(:[0-9]{1,5})?$' THEN
        PERFORM walhook._invalid(format('malformed target_url %L: bad host %L', target_url, m[2]));
    END IF;
    port := substring(m[2] FROM ':([0-9]+)$');
    IF port IS NOT NULL AND (port::int < 1 OR port::int > 65535) THEN
        PERFORM walhook._invalid(format('target_url %L: port %s is out of range (1-65535)', target_url, port));
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

-- _check_event bounds the name before anything else, and compares it only
-- with event names whose length is close enough to be a match: the distance
-- of two strings is at least the difference of their lengths, so the others
-- cannot be suggested and need no quadratic comparison.
CREATE OR REPLACE FUNCTION walhook._check_event(event text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    close text;
    max_d int;
BEGIN
    IF event IS NULL THEN
        PERFORM walhook._invalid('event must not be NULL');
    END IF;
    PERFORM walhook._check_length('event', event, 200);
    IF EXISTS (SELECT 1 FROM walhook.events e WHERE e.name = event) THEN
        RETURN event;
    END IF;
    max_d := greatest(3, length(event) / 3);
    SELECT string_agg(name, ', ' ORDER BY d, name) INTO close FROM (
        SELECT e.name, walhook._distance(e.name, event) AS d FROM walhook.events e
        WHERE abs(length(e.name) - length(event)) <= max_d
        ORDER BY d, e.name LIMIT 3) c
    WHERE d <= max_d;
    IF close IS NULL THEN
        PERFORM walhook._invalid(format('unknown event %L', event),
            (SELECT 'known events: ' || coalesce(string_agg(name, ', ' ORDER BY name), 'none (run walhook install with a config)') FROM walhook.events));
    END IF;
    PERFORM walhook._invalid(format('unknown event %L (did you mean %s?)', event, close));
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION walhook._check_secret(secret text) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    raw bytea;
BEGIN
    IF secret IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM walhook._check_length('secret', secret, 1024);
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

CREATE OR REPLACE FUNCTION walhook.subscribe(event text, target_url text, owner text,
                                             site text DEFAULT '/', dialect text DEFAULT 'default',
                                             secret text DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id uuid;
BEGIN
    IF owner IS NULL OR btrim(owner) = '' THEN
        PERFORM walhook._invalid('owner must not be empty');
    END IF;
    PERFORM walhook._check_length('owner', owner, 200);
    PERFORM walhook._check_length('dialect', dialect, 64);
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

CREATE OR REPLACE FUNCTION walhook.deactivate(id uuid, reason text DEFAULT 'Deactivated') RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM walhook._check_length('reason', reason, 1000);
    UPDATE walhook.subscriptions s SET active = false, status_message = reason, updated_at = now()
    WHERE s.id = deactivate.id;
    RETURN FOUND;
END $$;

CREATE OR REPLACE FUNCTION walhook.remove_owner(owner text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    PERFORM walhook._check_length('owner', remove_owner.owner, 200);
    WITH s AS (DELETE FROM walhook.subscriptions s WHERE s.owner = remove_owner.owner RETURNING s.id),
         d AS (DELETE FROM walhook.deliveries d USING s WHERE d.subscription_id = s.id),
         f AS (DELETE FROM walhook.subscription_failures f USING s WHERE f.subscription_id = s.id)
    SELECT count(*)::int INTO n FROM s;
    RETURN n;
END $$;

-- The same limits on the table, for every path that writes it (config
-- subscriptions, and SQL functions added later that might not check): a
-- value over its limit never reaches the owner index. Only values a write
-- changes are checked, so a row stored before these limits can still be
-- updated otherwise. The trigger's name sorts before guard_owner, whose
-- message would quote the owner.
CREATE FUNCTION walhook._bound_subscription() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    n jsonb := to_jsonb(NEW);
    o jsonb := to_jsonb(OLD); -- NULL on INSERT
    col text;
    max_chars int;
BEGIN
    FOR col, max_chars IN VALUES ('owner', 200), ('event', 200), ('target_url', 2048),
                                 ('site', 1000), ('dialect', 64), ('secret', 1024) LOOP
        IF n->>col IS DISTINCT FROM o->>col THEN
            PERFORM walhook._check_length(col, n->>col, max_chars);
        END IF;
    END LOOP;
    RETURN NEW;
END $$;
CREATE TRIGGER bound_inputs BEFORE INSERT OR UPDATE ON walhook.subscriptions
    FOR EACH ROW EXECUTE FUNCTION walhook._bound_subscription();

REVOKE ALL ON FUNCTION walhook._bound_subscription() FROM PUBLIC;
