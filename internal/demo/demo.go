// Package demo holds the demo's schema and config: a small shop (customers,
// orders, users with tenants) that `walhook demo`, `walhook bench` and the
// end-to-end tests share.
package demo

import _ "embed"

// Schema creates the demo tables (app.users, public.customers,
// public.orders, public.audit_log).
//
//go:embed schema.sql
var Schema string

// Config is a walhook.yaml mapping the demo tables.
//
//go:embed walhook.yaml
var Config []byte
