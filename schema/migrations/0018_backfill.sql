-- walhook schema, version 18: backfills. walhook.backfill() asks the
-- running walhook to send a subscription the rows that already exist, as
-- <noun>.existing events; walhook.backfills shows each table's progress.
--
-- One backfill (one id) has a row per table. The running walhook reads
-- each table in key order, a chunk at a time, between two watermarks it
-- emits as logical messages, and records after each chunk how far it got
-- (last_key) once the chunk's deliveries are sent or durably queued: a
-- restart resumes from there.

CREATE SEQUENCE walhook.backfills_id_seq;

CREATE TABLE walhook.backfills (
    id              bigint NOT NULL,
    table_name      text NOT NULL,
    subscription_id uuid NOT NULL REFERENCES walhook.subscriptions (id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'done', 'cancelled', 'failed')),
    rows_sent       bigint NOT NULL DEFAULT 0,
    estimate        bigint,               -- rows in the table when it started (pg_class.reltuples)
    last_key        text[],               -- the key of the last row of the last finished chunk
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    error           text,
    PRIMARY KEY (id, table_name)
);
CREATE INDEX backfills_open ON walhook.backfills (id) WHERE status IN ('pending', 'running');
CREATE INDEX backfills_subscription ON walhook.backfills (subscription_id);

-- _event_matches says whether event name is matched by pattern (a name,
-- noun.*, *.verb or *), as the subscription index matches them.
CREATE FUNCTION walhook._event_matches(name text, pattern text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN pattern = '*' THEN true
        WHEN pattern LIKE '%.*' THEN left(name, length(pattern) - 1) = left(pattern, -1)
        WHEN pattern LIKE '*.%' THEN right(name, length(pattern) - 1) = substr(pattern, 2)
        ELSE name = pattern
    END
$$;

-- backfill starts a backfill of the mapped tables the subscription's events
-- come from, or of the tables named (each must be mapped: 22023), and
-- returns its id. The subscription must be active and one the session may
-- act for. Each existing row goes to that subscription only, as
-- <noun>.existing (or the table's `verbs: {existing: ...}`), judged by the
-- table's acl rule and site as a live change is.
CREATE FUNCTION walhook.backfill(subscription_id uuid, tables text[] DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s walhook.subscriptions := walhook._subscription_for(backfill.subscription_id);
    new_id bigint;
    chosen text[];
    bad text;
BEGIN
    IF NOT s.active THEN
        PERFORM walhook._invalid(format('subscription %s is inactive (%s): activate it first', s.id, coalesce(s.status_message, 'no reason given')));
    END IF;
    IF tables IS NULL THEN
        SELECT array_agg(DISTINCT e.table_name ORDER BY e.table_name) INTO chosen
        FROM walhook.events e
        WHERE EXISTS (SELECT 1 FROM unnest(s.events) p WHERE walhook._event_matches(e.name, p));
        IF chosen IS NULL THEN
            PERFORM walhook._invalid(format('subscription %s takes no event of a mapped table', s.id));
        END IF;
    ELSE
        IF cardinality(tables) = 0 THEN
            PERFORM walhook._invalid('no table named', 'name a mapped table, or pass NULL for every table the subscription''s events come from');
        END IF;
        SELECT t INTO bad FROM unnest(tables) t
        WHERE t IS NULL OR NOT EXISTS (SELECT 1 FROM walhook.events e WHERE e.table_name = t) LIMIT 1;
        IF FOUND THEN
            PERFORM walhook._invalid(format('table %L is not mapped', bad),
                (SELECT 'mapped tables: ' || string_agg(DISTINCT table_name, ', ' ORDER BY table_name) FROM walhook.events));
        END IF;
        SELECT array_agg(DISTINCT t ORDER BY t) INTO chosen FROM unnest(tables) t;
    END IF;
    new_id := nextval('walhook.backfills_id_seq');
    INSERT INTO walhook.backfills (id, table_name, subscription_id)
    SELECT new_id, t, s.id FROM unnest(chosen) t;
    PERFORM pg_logical_emit_message(true, 'walhook.backfill', 'start ' || new_id);
    RETURN new_id;
END $$;

-- cancel_backfill stops backfill id: its tables not yet done are marked
-- cancelled, and walhook reads no further chunk of them. It returns whether
-- anything was left to cancel.
CREATE FUNCTION walhook.cancel_backfill(backfill_id bigint) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sub uuid;
    n int;
BEGIN
    SELECT b.subscription_id INTO sub FROM walhook.backfills b WHERE b.id = backfill_id LIMIT 1;
    IF NOT FOUND THEN
        PERFORM walhook._invalid(format('no backfill %s', backfill_id));
    END IF;
    PERFORM walhook._subscription_for(sub);
    UPDATE walhook.backfills b SET status = 'cancelled', finished_at = now()
    WHERE b.id = backfill_id AND b.status IN ('pending', 'running');
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_logical_emit_message(true, 'walhook.backfill', 'cancel ' || backfill_id);
    END IF;
    RETURN n > 0;
END $$;

REVOKE ALL ON FUNCTION walhook.backfill(uuid, text[]), walhook.cancel_backfill(bigint) FROM PUBLIC;
-- As walhook.subscriptions: each role sees what its policy shows (walhook
-- install gives the role walhook run uses a policy of its own).
ALTER TABLE walhook.backfills ENABLE ROW LEVEL SECURITY;
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['walhook_app', 'walhook_admin'] LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
        EXECUTE format('CREATE POLICY %I ON walhook.backfills TO %I USING (
            EXISTS (SELECT 1 FROM walhook.subscriptions s WHERE s.id = backfills.subscription_id AND walhook._may(s.owner)))',
            CASE r WHEN 'walhook_app' THEN 'app_owner' ELSE 'admin_owner' END, r);
        EXECUTE format('GRANT SELECT ON walhook.backfills TO %I', r);
        EXECUTE format('GRANT EXECUTE ON FUNCTION walhook.backfill(uuid, text[]), walhook.cancel_backfill(bigint) TO %I', r);
    END LOOP;
END $$;
