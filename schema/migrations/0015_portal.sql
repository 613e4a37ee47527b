-- walhook schema, version 15: the owner portal. portal_url(owner) gives a
-- signed, expiring link to the page where that owner, and only that owner,
-- manages their own subscriptions; set_target() changes where a subscription
-- delivers, with subscribe()'s URL rules.
--
-- A link is <public_url>/portal/<payload>.<signature>, where payload is the
-- base64url form of '<expiry unix seconds>:<owner>' and signature the
-- base64url HMAC-SHA256 of the payload text under a random key kept in
-- walhook.portal_keys, which only the schema owner reads. walhook run
-- records its --public-url in walhook.settings (key public_url) and checks
-- links with the same key.

CREATE TABLE walhook.portal_keys (
    id         int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    key        bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Two random UUIDs give 244 random bits without pgcrypto.
INSERT INTO walhook.portal_keys (key)
VALUES (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
REVOKE ALL ON walhook.portal_keys FROM PUBLIC;

-- _hmac is HMAC-SHA256 (RFC 2104) with the built-in sha256().
CREATE FUNCTION walhook._hmac(key bytea, msg bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    k bytea := key;
    ipad bytea;
    opad bytea;
BEGIN
    IF length(k) > 64 THEN
        k := sha256(k);
    END IF;
    k := k || decode(repeat('00', 64 - length(k)), 'hex');
    ipad := k;
    opad := k;
    FOR i IN 0..63 LOOP
        ipad := set_byte(ipad, i, get_byte(k, i) # 54);
        opad := set_byte(opad, i, get_byte(k, i) # 92);
    END LOOP;
    RETURN sha256(opad || sha256(ipad || msg));
END $$;

CREATE FUNCTION walhook._base64url(b bytea) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT translate(encode(b, 'base64'), E'+/=\n', '-_')
$$;

-- portal_url returns a link to owner's portal, valid for ttl (at most 30
-- days). A walhook_app session may ask only for the owner it names.
CREATE FUNCTION walhook.portal_url(owner text, ttl interval DEFAULT '1 hour') RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    base text;
    payload text;
    k bytea;
BEGIN
    IF owner IS NULL OR owner = '' THEN
        PERFORM walhook._invalid('owner must not be empty');
    END IF;
    IF ttl IS NULL OR ttl <= interval '0' OR ttl > interval '30 days' THEN
        PERFORM walhook._invalid(format('ttl %s: want more than 0 and at most 30 days', ttl));
    END IF;
    IF NOT walhook._may(owner) THEN
        PERFORM walhook._deny(format('may not make a portal link for owner %L', owner));
    END IF;
    SELECT value INTO base FROM walhook.settings WHERE key = 'public_url';
    IF base IS NULL OR base = '' THEN
        PERFORM walhook._invalid('no public URL is set for the portal',
            'start walhook run with --public-url https://hooks.example.com (or WALHOOK_PUBLIC_URL)');
    END IF;
    SELECT p.key INTO k FROM walhook.portal_keys p WHERE p.id = 1;
    payload := walhook._base64url(convert_to(
        floor(extract(epoch FROM now() + ttl))::bigint::text || ':' || owner, 'UTF8'));
    RETURN rtrim(base, '/') || '/portal/' || payload || '.'
        || walhook._base64url(walhook._hmac(k, convert_to(payload, 'UTF8')));
END $$;

-- set_target changes subscription id's target_url, checked as subscribe()
-- checks it.
CREATE FUNCTION walhook.set_target(id uuid, target_url text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s walhook.subscriptions := walhook._subscription_for(set_target.id);
    url text := walhook._check_url(target_url);
BEGIN
    PERFORM walhook._refuse_static(s.id, 'change the target of');
    UPDATE walhook.subscriptions x SET target_url = url, updated_at = now() WHERE x.id = s.id;
    RETURN FOUND;
END $$;

REVOKE ALL ON FUNCTION walhook._hmac(bytea, bytea), walhook._base64url(bytea),
    walhook.portal_url(text, interval), walhook.set_target(uuid, text) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walhook_app') THEN
        GRANT EXECUTE ON FUNCTION walhook.portal_url(text, interval), walhook.set_target(uuid, text) TO walhook_app;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walhook_admin') THEN
        GRANT EXECUTE ON FUNCTION walhook.portal_url(text, interval), walhook.set_target(uuid, text) TO walhook_admin;
    END IF;
END $$;
