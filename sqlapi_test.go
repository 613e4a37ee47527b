package walhook

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/walhook/walhook/internal/demo"
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
			_, err := e.Conn.Exec(context.Background(), `SELECT walhook.subscribe($1, $2, $3, $4, $5, $6)`, tc.args...)
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
	if err := e.Conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.subscriptions`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("subscriptions after refusals = %d, %v; want 0", n, err)
	}

	// Good input: a trailing slash is normalised, a generated secret has the
	// Standard Webhooks form.
	var site, secret string
	var id string
	err := e.Conn.QueryRow(context.Background(), `SELECT walhook.subscribe('order.created', 'https://example.com/h', '1', '/acme/east/', 'zapier', 'generate')::text`).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	err = e.Conn.QueryRow(context.Background(), `SELECT site, secret FROM walhook.subscriptions WHERE id = $1`, id).Scan(&site, &secret)
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
	changes, err := Install(context.Background(), e.Conn, e.Config(), InstallOptions{Slot: e.Slot, AllowHTTP: false})
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 1 || changes[0] != "setting allow_http = false" {
		t.Fatalf("install changes = %q, want only the allow_http setting", changes)
	}
	_, err = e.Conn.Exec(context.Background(), `SELECT walhook.subscribe('order.created', 'http://example.com/h', '1')`)
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
	cfg := string(demo.Config)
	i := strings.Index(cfg, "  - table: public.customers")
	j := strings.Index(cfg, "delivery:")
	if err := os.WriteFile(e.CfgPath, []byte(cfg[:i]+cfg[j:]), 0o600); err != nil {
		t.Fatal(err)
	}
	changes := strings.Join(e.install(), "\n")
	for _, want := range []string{"removed event customer.created", "removed event customer.updated", "publication walhook now covers app.users, public.orders, walhook.owner_state, walhook.subscriptions"} {
		if !strings.Contains(changes, want) {
			t.Fatalf("install changes:\n%s\nwant a line with %q", changes, want)
		}
	}
	var n int
	if err := e.Conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.events WHERE name LIKE 'customer.%'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("customer events left: %d, %v", n, err)
	}
}
