-- The demo's application: users who own subscriptions, customers and orders.
CREATE SCHEMA app;
CREATE TABLE app.users (
    id         bigint PRIMARY KEY,
    name       text NOT NULL,
    tenant_ids bigint[] NOT NULL DEFAULT '{}',
    is_admin   boolean NOT NULL DEFAULT false
);
CREATE TABLE public.customers (
    id            bigserial PRIMARY KEY,
    tenant_id     bigint NOT NULL,
    tenant_path   text,
    name          text NOT NULL,
    email         text,
    password_hash text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.orders (
    id            bigserial PRIMARY KEY,
    customer_id   bigint REFERENCES public.customers,
    tenant_id     bigint NOT NULL,
    tenant_path   text,
    status        text NOT NULL DEFAULT 'new',
    total         numeric(12, 2) NOT NULL,
    internal_note text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    paid_at       timestamptz
);
-- Unmapped: walhook never sees it.
CREATE TABLE public.audit_log (id bigserial PRIMARY KEY, note text);

INSERT INTO app.users (id, name, tenant_ids, is_admin) VALUES
    (1, 'Ada (admin)', '{}', true),
    (2, 'Bob (tenant 7)', '{7}', false);
