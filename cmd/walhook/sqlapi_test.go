package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestSubscribeRefusesBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	// http:// is allowed by newEnv's install; a second installation setting
	// is tested below.
	tests := []struct {
		name    string
		args    []any // event, url, owner, site, dialect, secret
		wantMsg string
	}{
		{"unknown event with close match", []any{"order.craeted", "https://example.com/h", "1", "/", "default", nil}, `unknown event 'order.craeted' (did you mean order.created`},
		{"unknown event far from all", []any{"zzz", "https://example.com/h", "1", "/", "default", nil}, `unknown event 'zzz'`},
		{"relative url", []any{"order.created", "/hooks", "1", "/", "default", nil}, "malformed target_url"},
		{"not a url", []any{"order.created", "example.com", "1", "/", "default", nil}, "malformed target_url"},
		{"ftp scheme", []any{"order.created", "ftp://example.com/h", "1", "/", "default", nil}, `scheme 'ftp' is not supported`},
		{"credentials", []any{"order.created", "https://user:pw@example.com/h", "1", "/", "default", nil}, "must not contain credentials"},
		{"space in url", []any{"order.created", "https://exa mple.com/h", "1", "/", "default", nil}, "white space"},
		{"fragment", []any{"order.created", "https://example.com/h#x", "1", "/", "default", nil}, "fragment"},
		{"empty owner", []any{"order.created", "https://example.com/h", " ", "/", "default", nil}, "owner must not be empty"},
		{"relative site", []any{"order.created", "https://example.com/h", "1", "acme", "default", nil}, "malformed site"},
		{"double slash site", []any{"order.created", "https://example.com/h", "1", "/acme//east", "default", nil}, "malformed site"},
		{"unknown dialect", []any{"order.created", "https://example.com/h", "1", "/", "slack", nil}, `unknown dialect 'slack'`},
		{"bad secret", []any{"order.created", "https://example.com/h", "1", "/", "default", "hunter2"}, "secret must be"},
		{"short secret", []any{"order.created", "https://example.com/h", "1", "/", "default", "whsec_YWJj"}, "want 24 to 64 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.conn.Exec(context.Background(), `SELECT walhook.subscribe($1, $2, $3, $4, $5, $6)`, tc.args...)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("subscribe() error = %v, want SQLSTATE 22023", err)
			}
			if pgErr.Code != "22023" || !strings.Contains(pgErr.Message, tc.wantMsg) {
				t.Fatalf("subscribe() = %s %q, want 22023 containing %q", pgErr.Code, pgErr.Message, tc.wantMsg)
			}
		})
	}
	var n int
	if err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.subscriptions`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("subscriptions after refusals = %d, %v; want 0", n, err)
	}

	// Good input: a trailing slash is normalised, a generated secret has the
	// Standard Webhooks form.
	var site, secret string
	var id string
	err := e.conn.QueryRow(context.Background(), `SELECT walhook.subscribe('order.created', 'https://example.com/h', '1', '/acme/east/', 'zapier', 'generate')::text`).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	err = e.conn.QueryRow(context.Background(), `SELECT site, secret FROM walhook.subscriptions WHERE id = $1`, id).Scan(&site, &secret)
	if err != nil {
		t.Fatal(err)
	}
	if site != "/acme/east" || !strings.HasPrefix(secret, "whsec_") || len(secret) < 40 {
		t.Fatalf("site %q, secret %q; want /acme/east and a whsec_ secret", site, secret)
	}
}

func TestHTTPRefusedUnlessInstalledWithAllowHTTP(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	cfg, mapper, err := loadConfig(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	changes, err := install(context.Background(), e.conn, common{Slot: e.slot, Publication: "walhook", AllowHTTP: false}, cfg, mapper)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 1 || changes[0] != "setting allow_http = false" {
		t.Fatalf("install changes = %q, want only the allow_http setting", changes)
	}
	_, err = e.conn.Exec(context.Background(), `SELECT walhook.subscribe('order.created', 'http://example.com/h', '1')`)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22023" || !strings.Contains(pgErr.Message, "http:// is not allowed") {
		t.Fatalf("subscribe(http://) = %v, want 22023 http:// is not allowed", err)
	}
}

func TestInstallIsIdempotentAndFollowsConfig(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	if changes := e.install(); len(changes) != 0 {
		t.Fatalf("second install changed %q, want nothing", changes)
	}
	// Drop customers from the config: its events and publication entry go.
	cfg := string(demoConfig)
	i := strings.Index(cfg, "  - table: public.customers")
	j := strings.Index(cfg, "delivery:")
	if err := os.WriteFile(e.cfgPath, []byte(cfg[:i]+cfg[j:]), 0o600); err != nil {
		t.Fatal(err)
	}
	changes := strings.Join(e.install(), "\n")
	for _, want := range []string{"removed event customer.created", "removed event customer.updated", "publication walhook now covers app.users, public.orders, walhook.subscriptions"} {
		if !strings.Contains(changes, want) {
			t.Fatalf("install changes:\n%s\nwant a line with %q", changes, want)
		}
	}
	var n int
	if err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.events WHERE name LIKE 'customer.%'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("customer events left: %d, %v", n, err)
	}
}

func TestCheckCommand(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.exec(`ALTER TABLE public.orders REPLICA IDENTITY DEFAULT`)
	tests := []struct {
		name     string
		config   string
		withDB   bool
		wantErr  string
		wantOut  string
		exitCode int
	}{
		{name: "valid", config: string(demoConfig), withDB: true, wantOut: "ok: 2 table(s)"},
		{name: "warns of a missing replica identity", config: string(demoConfig), withDB: true, wantOut: "public.orders lacks REPLICA IDENTITY FULL, but its rules read the row"},
		{name: "unknown key", config: "tables:\n  - table: public.orders\n    noun: order\n    acl: 'true'\n    colour: red\n", wantErr: `walhook.yaml:5: tables[0].colour: unknown key`, exitCode: 1},
		{name: "unknown column with database", config: "tables:\n  - table: public.orders\n    noun: order\n    acl: 'true'\n    columns: {exclude: [nope]}\n", withDB: true, wantErr: `walhook.yaml:5: tables[0].columns.exclude`, exitCode: 1},
		{name: "unknown table with database", config: "tables:\n  - table: public.ordres\n    noun: order\n    acl: 'true'\n", withDB: true, wantErr: `walhook.yaml:2: tables[0].table`, exitCode: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "walhook.yaml")
			if err := os.WriteFile(path, []byte(tc.config), 0o600); err != nil {
				t.Fatal(err)
			}
			args := []string{"check", "--config", path}
			if tc.withDB {
				args = append(args, "--database-url", e.dsn)
			}
			var out, errOut bytes.Buffer
			err := run(context.Background(), args, &out, &errOut)
			if tc.wantErr == "" {
				if err != nil || !strings.Contains(out.String(), tc.wantOut) {
					t.Fatalf("check = %v, output %q; want success containing %q", err, out.String(), tc.wantOut)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || exitCode(err) != tc.exitCode {
				t.Fatalf("check error = %v (exit %d), want containing %q (exit %d)", err, exitCode(err), tc.wantErr, tc.exitCode)
			}
		})
	}
}

func TestRunRefusesAConfigNotInstalled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	newer := strings.Replace(string(demoConfig), "  - table: public.customers", "  - table: public.audit_log\n    noun: audit\n    acl: 'true'\n  - table: public.customers", 1)
	path := filepath.Join(t.TempDir(), "newer.yaml")
	if err := os.WriteFile(path, []byte(newer), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"run", "--database-url", e.dsn, "--config", path, "--slot", e.slot, "--listen", ""}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "not installed: public.audit_log, event audit.created") {
		t.Fatalf("run with a newer config = %v, want it refused naming what is not installed", err)
	}
}

func TestUninstall(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := context.Background()
	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"uninstall", "--database-url", e.dsn, "--slot", e.slot}, &out, &errOut); err != nil {
		t.Fatalf("uninstall: %v (%s)", err, errOut.String())
	}
	var slots, pubs int
	var schemaLeft bool
	query := func() {
		t.Helper()
		err := e.conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1),
			(SELECT count(*) FROM pg_publication WHERE pubname = 'walhook'),
			to_regnamespace('walhook') IS NOT NULL`, e.slot).Scan(&slots, &pubs, &schemaLeft)
		if err != nil {
			t.Fatal(err)
		}
	}
	query()
	if slots != 0 || pubs != 0 || !schemaLeft {
		t.Fatalf("after uninstall: slots %d, publications %d, schema kept %v; want 0, 0, true", slots, pubs, schemaLeft)
	}
	if err := run(ctx, []string{"uninstall", "--database-url", e.dsn, "--slot", e.slot, "--drop-schema"}, &out, &errOut); err != nil {
		t.Fatalf("uninstall --drop-schema: %v", err)
	}
	query()
	if schemaLeft {
		t.Fatal("schema walhook still there after --drop-schema")
	}
}

func TestFlagsRefuseBadNames(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"status", "--database-url", "postgres://x/y", "--slot", "Bad-Slot"},
		{"install", "--database-url", "postgres://x/y", "--publication", "pub'); DROP"},
	} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), args, &out, &errOut)
		if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "lower-case letters, digits and _") {
			t.Fatalf("run(%q) = %v (exit %d), want a usage error naming the rule", args, err, exitCode(err))
		}
	}
}
