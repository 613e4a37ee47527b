-- walhook schema, version 12: held deliveries. A change walhook cannot judge
-- or shape — an acl rule, a derived event's condition or a payload that fails
-- to evaluate, owners that cannot be loaded, a mapped table that lost a column
-- the config names — is neither sent nor dropped: its deliveries are held
-- here with the reason, and the slot moves on. Nothing is sent for a held
-- row (confidentiality first). walhook.release_held() asks the running
-- leader to judge them again with the config and owners it has now; a start
-- with a new config does so for every held row; walhook.discard_held()
-- drops them on purpose. Resolved rows stay, with how they were resolved.

CREATE TABLE walhook.held (
    id                   bigserial PRIMARY KEY,
    -- key identifies the held delivery across replays of its change:
    -- commit LSN, position in the transaction, event and subscription.
    key                  text NOT NULL UNIQUE,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    cause                text NOT NULL CHECK (cause IN ('rule', 'payload', 'owners', 'schema')),
    reason               text NOT NULL,
    table_name           text NOT NULL,
    -- NULL subscription and event: the whole change is held (the table no
    -- longer matches the config, so its events and sites are unknown).
    subscription_id      uuid,
    owner                text,
    event                text,
    event_id             text,
    commit_lsn           pg_lsn NOT NULL,
    committed_at         timestamptz,
    change               jsonb NOT NULL,
    status               text NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'released', 'discarded')),
    release_requested_at timestamptz,
    resolved_at          timestamptz,
    resolution           text
);
CREATE INDEX held_pending ON walhook.held (id) WHERE status = 'held';
CREATE INDEX held_release ON walhook.held (id) WHERE status = 'held' AND release_requested_at IS NOT NULL;

-- release_held asks the leader to judge held deliveries again with the
-- config and owners it has now: those of one table (or all with NULL) and,
-- optionally, one cause. It returns how many were asked for. Those still
-- failing stay held with the new reason.
CREATE FUNCTION walhook.release_held(table_name text DEFAULT NULL, cause text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    IF cause IS NOT NULL AND cause NOT IN ('rule', 'payload', 'owners', 'schema') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('unknown cause %L (want rule, payload, owners or schema)', cause);
    END IF;
    UPDATE walhook.held h SET release_requested_at = now(), updated_at = now()
    WHERE h.status = 'held'
      AND (release_held.table_name IS NULL OR h.table_name = release_held.table_name)
      AND (release_held.cause IS NULL OR h.cause = release_held.cause);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- discard_held drops held deliveries on purpose: one by id, or those of a
-- table (and cause). The rows stay, marked discarded, with who did it.
CREATE FUNCTION walhook.discard_held(id bigint DEFAULT NULL, table_name text DEFAULT NULL, cause text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    IF id IS NULL AND table_name IS NULL AND cause IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'discard_held needs an id, a table_name or a cause: refusing to discard every held delivery by accident';
    END IF;
    UPDATE walhook.held h SET status = 'discarded', resolved_at = now(), updated_at = now(),
        resolution = format('discarded by %s with walhook.discard_held()', session_user)
    WHERE h.status = 'held'
      AND (discard_held.id IS NULL OR h.id = discard_held.id)
      AND (discard_held.table_name IS NULL OR h.table_name = discard_held.table_name)
      AND (discard_held.cause IS NULL OR h.cause = discard_held.cause);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

REVOKE ALL ON FUNCTION walhook.release_held(text, text), walhook.discard_held(bigint, text, text) FROM PUBLIC;

-- Operators acting for every owner may release and discard.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walhook_admin') THEN
        GRANT EXECUTE ON FUNCTION walhook.release_held(text, text), walhook.discard_held(bigint, text, text) TO walhook_admin;
        GRANT SELECT (id, created_at, updated_at, cause, reason, table_name, subscription_id, owner, event, event_id,
            commit_lsn, committed_at, status, release_requested_at, resolved_at, resolution) ON walhook.held TO walhook_admin;
    END IF;
END $$;
