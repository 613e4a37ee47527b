-- walhook schema, version 8: a subscription takes a list of events, each an
-- event name or a pattern (noun.*, *.verb, *). One subscription keeps one
-- secret, one attempt history and one failure count for all of them.
--
-- events is the truth; event stays, always events[1], so that readers of the
-- single-event API (SELECT event FROM walhook.subscriptions) keep working. A
-- trigger keeps the two in step, also for an old writer that sets only event.

ALTER TABLE walhook.subscriptions ADD COLUMN events text[];
UPDATE walhook.subscriptions SET events = ARRAY[event];
ALTER TABLE walhook.subscriptions ALTER COLUMN events SET NOT NULL;
-- Log entries written before this version have events NULL: a load reads
-- them as ARRAY[event].
ALTER TABLE walhook.subscription_log ADD COLUMN events text[];

CREATE FUNCTION walhook._sync_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.events IS NOT DISTINCT FROM OLD.events
       AND NEW.event IS DISTINCT FROM OLD.event THEN
        NEW.events := ARRAY[NEW.event]; -- a writer that knows only event
    ELSIF NEW.events IS NULL OR cardinality(NEW.events) = 0 THEN
        NEW.events := ARRAY[NEW.event];
    END IF;
    NEW.event := NEW.events[1];
    RETURN NEW;
END $$;
CREATE TRIGGER sync_event BEFORE INSERT OR UPDATE ON walhook.subscriptions
    FOR EACH ROW EXECUTE FUNCTION walhook._sync_event();

-- _check_pattern raises 22023 unless pattern is noun.*, *.verb or * and
-- matches at least one event the installed config offers. A noun is what
-- comes before an event name's first dot, a verb what follows its last.
CREATE FUNCTION walhook._check_pattern(pattern text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    part text;
    found_one boolean;
    close text;
BEGIN
    PERFORM walhook._check_length('event', pattern, 200);
    IF pattern = '*' THEN
        found_one := EXISTS (SELECT 1 FROM walhook.events);
    ELSIF pattern ~ '^[a-z][a-z0-9_]*\.\*$' THEN
        part := left(pattern, -1); -- 'order.'
        found_one := EXISTS (SELECT 1 FROM walhook.events e WHERE left(e.name, length(part)) = part);
    ELSIF pattern ~ '^\*\.[a-z][a-z0-9_]*$' THEN
        part := substr(pattern, 2); -- '.created'
        found_one := EXISTS (SELECT 1 FROM walhook.events e WHERE right(e.name, length(part)) = part);
    ELSE
        PERFORM walhook._invalid(format('malformed event pattern %L', pattern),
            'a pattern is noun.* (order.*), *.verb (*.deleted) or * (every event)');
    END IF;
    IF found_one THEN
        RETURN pattern;
    END IF;
    SELECT string_agg(p, ', ' ORDER BY d, p) INTO close FROM (
        SELECT p, walhook._distance(p, pattern) AS d FROM (
            SELECT DISTINCT split_part(e.name, '.', 1) || '.*' AS p FROM walhook.events e
            UNION
            SELECT DISTINCT '*.' || regexp_replace(e.name, '^.*\.', '') FROM walhook.events e) offered
        ORDER BY d, p LIMIT 3) c
    WHERE d <= greatest(2, length(pattern) / 3);
    IF close IS NOT NULL THEN
        PERFORM walhook._invalid(format('event pattern %L matches no event (did you mean %s?)', pattern, close));
    END IF;
    PERFORM walhook._invalid(format('event pattern %L matches no event', pattern),
        (SELECT 'known events: ' || coalesce(string_agg(name, ', ' ORDER BY name), 'none (run walhook install with a config)') FROM walhook.events));
    RETURN NULL;
END $$;

-- _check_events returns events checked and without repeats, in the order
-- given, or raises 22023 naming the first entry that is wrong.
CREATE FUNCTION walhook._check_events(events text[]) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    e text;
    checked text[] := '{}';
BEGIN
    IF events IS NULL OR cardinality(events) = 0 THEN
        PERFORM walhook._invalid('events must list at least one event name or pattern',
            'for example ARRAY[''order.created'', ''customer.*'']');
    END IF;
    IF array_ndims(events) <> 1 THEN
        PERFORM walhook._invalid(format('events must be a one-dimensional array, got %s dimensions', array_ndims(events)));
    END IF;
    -- A bound keeps the index and the stream's rows small; patterns cover
    -- what a longer list would.
    IF cardinality(events) > 100 THEN
        PERFORM walhook._invalid(format('events lists %s entries, at most 100', cardinality(events)),
            'use patterns: order.*, *.deleted, *');
    END IF;
    FOREACH e IN ARRAY events LOOP
        IF e IS NULL THEN
            PERFORM walhook._invalid('events must not contain NULL');
        END IF;
        IF position('*' IN e) > 0 THEN
            PERFORM walhook._check_pattern(e);
        ELSE
            PERFORM walhook._check_event(e);
        END IF;
        IF NOT e = ANY (checked) THEN
            checked := checked || e;
        END IF;
    END LOOP;
    RETURN checked;
END $$;

CREATE FUNCTION walhook.subscribe(events text[], target_url text, owner text,
                                  site text DEFAULT '/', dialect text DEFAULT 'default',
                                  secret text DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id uuid;
BEGIN
    PERFORM walhook._check_length('owner', owner, 200);
    PERFORM walhook._check_length('dialect', dialect, 64);
    IF owner IS NULL OR btrim(owner) = '' THEN
        PERFORM walhook._invalid('owner must not be empty');
    END IF;
    IF dialect IS NULL OR NOT EXISTS (SELECT 1 FROM walhook.dialects d WHERE d.name = subscribe.dialect) THEN
        PERFORM walhook._invalid(format('unknown dialect %L', dialect),
            (SELECT 'known dialects: ' || string_agg(name, ', ' ORDER BY name) FROM walhook.dialects));
    END IF;
    INSERT INTO walhook.subscriptions (owner, events, target_url, site, dialect, secret)
    VALUES (owner, walhook._check_events(subscribe.events), walhook._check_url(target_url),
            walhook._check_site(site), dialect, walhook._check_secret(secret))
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;

-- The single-event form now takes a pattern too; it is the list form with
-- one entry.
CREATE OR REPLACE FUNCTION walhook.subscribe(event text, target_url text, owner text,
                                  site text DEFAULT '/', dialect text DEFAULT 'default',
                                  secret text DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF event IS NULL THEN
        PERFORM walhook._invalid('event must not be NULL');
    END IF;
    RETURN walhook.subscribe(ARRAY[event], target_url, owner, site, dialect, secret);
END $$;

-- set_events replaces a subscription's events; false when there is no such
-- subscription. Its secret, history and failure count stay.
CREATE FUNCTION walhook.set_events(id uuid, events text[]) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    checked text[] := walhook._check_events(set_events.events);
BEGIN
    UPDATE walhook.subscriptions s SET events = checked, updated_at = now()
    WHERE s.id = set_events.id;
    RETURN FOUND;
END $$;

REVOKE ALL ON FUNCTION walhook.subscribe(text[], text, text, text, text, text),
    walhook.set_events(uuid, text[]) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walhook_app') THEN
        GRANT SELECT (events) ON walhook.subscriptions TO walhook_app;
        GRANT EXECUTE ON FUNCTION walhook.subscribe(text[], text, text, text, text, text),
            walhook.set_events(uuid, text[]) TO walhook_app;
    END IF;
END $$;
