-- walhook schema, version 14: owner attributes in commit order. A change is
-- judged with its owner's attributes as they stood at that change, live and
-- after downtime: the attributes are written, in the writer's own
-- transaction, to walhook.owner_state, which is in the publication, so they
-- reach walhook on the stream in commit order, between the changes they
-- govern. walhook logs what it applied in walhook.owner_log with the LSN, so
-- that a restart loads the owners as of the slot's confirmed position.
--
-- Who writes owner_state: triggers that install puts on each owners.watch
-- table (statement-level, after every insert, update and delete) and on
-- walhook.subscriptions (an owner's first subscription), running the
-- config's owners.query (kept in walhook.settings) for the owners affected.

CREATE TABLE walhook.owner_state (
    owner      text PRIMARY KEY,
    present    boolean NOT NULL,      -- false: owners.query does not find it
    attrs      jsonb NOT NULL,        -- the query's row, id included
    -- error is why owners.query failed for this owner at its last refresh
    -- (a renamed column, say): walhook holds its deliveries until a
    -- refresh succeeds. The writer's own statement never fails for it.
    error      text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE walhook.owner_state REPLICA IDENTITY FULL;

CREATE TABLE walhook.owner_log (
    owner   text NOT NULL,
    lsn     pg_lsn NOT NULL,
    present boolean,                  -- NULL: no longer tracked
    attrs   jsonb,
    error   text,
    PRIMARY KEY (owner, lsn)
);

-- _owners_attrs runs owners.query for ids and returns each owner found
-- with its row as jsonb. install replaces it with a function whose body is
-- the config's query, so that its plan is cached per session instead of
-- planned on every write (this one finds no owner).
CREATE FUNCTION walhook._owners_attrs(ids text[]) RETURNS TABLE (owner text, attrs jsonb)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN;
END $$;

-- _refresh_owners runs owners.query for ids that have subscriptions and
-- writes what changed to owner_state. It runs as the schema's owner, so the
-- writer needs no rights on schema walhook; the query reads the
-- application's tables with those rights too.
CREATE FUNCTION walhook._refresh_owners(ids text[]) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    wanted text[];
    n integer := 0;
BEGIN
    IF ids IS NULL OR coalesce((SELECT value FROM walhook.settings WHERE key = 'owners_query'), '') = '' THEN
        RETURN 0;
    END IF;
    SELECT array_agg(DISTINCT s.owner) INTO wanted FROM walhook.subscriptions s WHERE s.owner = ANY (ids);
    IF wanted IS NULL THEN
        RETURN 0;
    END IF;
    BEGIN
        WITH found AS (SELECT * FROM walhook._owners_attrs(wanted)),
             fresh AS (
                SELECT w.owner, f.attrs IS NOT NULL AS present,
                       coalesce(f.attrs, jsonb_build_object('id', w.owner)) AS attrs
                FROM unnest(wanted) AS w(owner) LEFT JOIN found f ON f.owner = w.owner),
             up AS (
                INSERT INTO walhook.owner_state AS s (owner, present, attrs)
                SELECT fresh.owner, fresh.present, fresh.attrs FROM fresh
                ON CONFLICT (owner) DO UPDATE SET present = excluded.present, attrs = excluded.attrs,
                    error = NULL, updated_at = now()
                WHERE s.present IS DISTINCT FROM excluded.present OR s.attrs IS DISTINCT FROM excluded.attrs
                    OR s.error IS NOT NULL
                RETURNING 1)
        SELECT count(*) INTO n FROM up;
    EXCEPTION WHEN OTHERS THEN
        -- The application's write must not fail for walhook's query: the
        -- owners are marked, and their deliveries held until a refresh works.
        INSERT INTO walhook.owner_state AS s (owner, present, attrs, error)
        SELECT w, false, jsonb_build_object('id', w), format('owners.query failed: %s (SQLSTATE %s)', SQLERRM, SQLSTATE)
        FROM unnest(wanted) AS w
        ON CONFLICT (owner) DO UPDATE SET error = excluded.error, updated_at = now()
        WHERE s.error IS DISTINCT FROM excluded.error;
        GET DIAGNOSTICS n = ROW_COUNT;
    END;
    RETURN n;
END $$;

-- _owners_changed is the statement trigger on an owners.watch table:
-- TG_ARGV[0] names the column holding the owner id, or is '' when the table
-- does not say, and then every subscribed owner is refreshed.
CREATE FUNCTION walhook._owners_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids text[];
    col text := TG_ARGV[0];
BEGIN
    IF col = '' THEN
        SELECT array_agg(DISTINCT owner) INTO ids FROM walhook.subscriptions;
    ELSE
        -- Only the touched owners that have subscriptions: most writes to
        -- an owners table touch none, and then nothing more runs.
        EXECUTE format('SELECT array_agg(DISTINCT x.id) FROM (%s) x WHERE EXISTS (SELECT 1 FROM walhook.subscriptions s WHERE s.owner = x.id)',
            CASE TG_OP
                WHEN 'INSERT' THEN format('SELECT %I::text AS id FROM new_rows', col)
                WHEN 'DELETE' THEN format('SELECT %I::text AS id FROM old_rows', col)
                ELSE format('SELECT %1$I::text AS id FROM new_rows UNION ALL SELECT %1$I::text FROM old_rows', col)
            END) INTO ids;
    END IF;
    IF ids IS NOT NULL THEN
        PERFORM walhook._refresh_owners(ids);
    END IF;
    RETURN NULL;
END $$;

-- An owner's first subscription records its attributes, in the same
-- transaction, so that every subscribed owner has a state.
CREATE FUNCTION walhook._subscription_owner() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM walhook.owner_state WHERE owner = NEW.owner) THEN
        PERFORM walhook._refresh_owners(ARRAY[NEW.owner]);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER owner_state AFTER INSERT OR UPDATE OF owner ON walhook.subscriptions
    FOR EACH ROW EXECUTE FUNCTION walhook._subscription_owner();

REVOKE ALL ON FUNCTION walhook._refresh_owners(text[]) FROM PUBLIC;

-- release_held refreshes the owners whose last refresh failed first (their
-- query may work again), then asks for the release, and announces it on the
-- stream: walhook judges the held rows again once it has applied the
-- refreshed owners, which come before the announcement in commit order.
CREATE OR REPLACE FUNCTION walhook.release_held(table_name text DEFAULT NULL, cause text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    IF cause IS NOT NULL AND cause NOT IN ('rule', 'payload', 'owners', 'schema') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('unknown cause %L (want rule, payload, owners or schema)', cause);
    END IF;
    PERFORM walhook._refresh_owners(array_agg(o.owner)) FROM walhook.owner_state o WHERE o.error IS NOT NULL;
    UPDATE walhook.held h SET release_requested_at = now(), updated_at = now()
    WHERE h.status = 'held'
      AND (release_held.table_name IS NULL OR h.table_name = release_held.table_name)
      AND (release_held.cause IS NULL OR h.cause = release_held.cause);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_logical_emit_message(true, 'walhook.release', n::text);
    RETURN n;
END $$;
