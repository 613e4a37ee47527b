package schema

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/internal/pgtest"
)

// installed returns a connection to a fresh database with walhook installed
// offering a few events, and the id of one subscription.
func installed(t *testing.T) (*pgx.Conn, string) {
	t.Helper()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.WithoutCancel(ctx)) })
	_, err = Install(ctx, conn, Options{
		Events: []Event{
			{Name: "order.created", Table: "public.orders", Operation: "insert"},
			{Name: "order.updated", Table: "public.orders", Operation: "update"},
		},
		Dialects: []string{"zapier"},
		Settings: map[string]string{"allow_http": "false"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var id string
	if err := conn.QueryRow(ctx, `SELECT walhook.subscribe('order.created', 'https://example.com/h', 'o')::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return conn, id
}

// TestInputBounds: every text argument of the SQL API is refused with 22023
// and a message naming it and its limit when it is one character too long,
// and passes the length check at the limit.
func TestInputBounds(t *testing.T) {
	t.Parallel()
	conn, id := installed(t)
	const mb = 1 << 20
	url := func(n int) string { return "https://example.com/" + strings.Repeat("a", n-len("https://example.com/")) }
	site := func(n int) string { return "/" + strings.Repeat("s", n-1) }
	secret := func(n int) string { return "whsec_" + strings.Repeat("A", n-len("whsec_")) }
	tests := []struct {
		name    string
		sql     string
		args    []any
		wantMsg string // "" means accepted
	}{
		{"event 1 MB", `SELECT walhook.subscribe($1, 'https://example.com/h', 'o')`, []any{strings.Repeat("e", mb)}, "event is too long: 1048576 characters, the limit is 200"},
		{"event 201", `SELECT walhook.subscribe($1, 'https://example.com/h', 'o')`, []any{strings.Repeat("e", 201)}, "event is too long: 201 characters, the limit is 200"},
		{"event 200 is only unknown", `SELECT walhook.subscribe($1, 'https://example.com/h', 'o')`, []any{strings.Repeat("e", 200)}, "unknown event"},
		{"owner 1 MB", `SELECT walhook.subscribe('order.created', 'https://example.com/h', $1)`, []any{strings.Repeat("o", mb)}, "owner is too long: 1048576 characters, the limit is 200"},
		{"owner 201", `SELECT walhook.subscribe('order.created', 'https://example.com/h', $1)`, []any{strings.Repeat("o", 201)}, "owner is too long: 201 characters, the limit is 200"},
		{"owner 200", `SELECT walhook.subscribe('order.created', 'https://example.com/h', $1)`, []any{strings.Repeat("o", 200)}, ""},
		{"owner multibyte counts characters", `SELECT walhook.subscribe('order.created', 'https://example.com/h', $1)`, []any{strings.Repeat("ö", 200)}, ""},
		{"url 1 MB", `SELECT walhook.subscribe('order.created', $1, 'o')`, []any{url(mb)}, "target_url is too long: 1048576 characters, the limit is 2048"},
		{"url 2049", `SELECT walhook.subscribe('order.created', $1, 'o')`, []any{url(2049)}, "target_url is too long: 2049 characters, the limit is 2048"},
		{"url 2048", `SELECT walhook.subscribe('order.created', $1, 'o')`, []any{url(2048)}, ""},
		{"site 1 MB", `SELECT walhook.subscribe('order.created', 'https://example.com/h', 'o', $1)`, []any{site(mb)}, "site is too long: 1048576 characters, the limit is 1000"},
		{"site 1001", `SELECT walhook.subscribe('order.created', 'https://example.com/h', 'o', $1)`, []any{site(1001)}, "site is too long: 1001 characters, the limit is 1000"},
		{"site 1000", `SELECT walhook.subscribe('order.created', 'https://example.com/h', 'o', $1)`, []any{site(1000)}, ""},
		{"dialect 1 MB", `SELECT walhook.subscribe('order.created', 'https://example.com/h', 'o', '/', $1)`, []any{strings.Repeat("d", mb)}, "dialect is too long: 1048576 characters, the limit is 64"},
		{"dialect 65", `SELECT walhook.subscribe('order.created', 'https://example.com/h', 'o', '/', $1)`, []any{strings.Repeat("d", 65)}, "dialect is too long: 65 characters, the limit is 64"},
		{"dialect 64 is only unknown", `SELECT walhook.subscribe('order.created', 'https://example.com/h', 'o', '/', $1)`, []any{strings.Repeat("d", 64)}, "unknown dialect"},
		{"secret 1 MB", `SELECT walhook.subscribe('order.created', 'https://example.com/h', 'o', '/', 'default', $1)`, []any{secret(mb)}, "secret is too long: 1048576 characters, the limit is 1024"},
		{"secret 1025", `SELECT walhook.subscribe('order.created', 'https://example.com/h', 'o', '/', 'default', $1)`, []any{secret(1025)}, "secret is too long: 1025 characters, the limit is 1024"},
		{"secret 1024 is only malformed", `SELECT walhook.subscribe('order.created', 'https://example.com/h', 'o', '/', 'default', $1)`, []any{secret(1024)}, "secret: the part after whsec_ is not valid base64"},
		{"reason 1 MB", `SELECT walhook.deactivate($1, $2)`, []any{id, strings.Repeat("r", mb)}, "reason is too long: 1048576 characters, the limit is 1000"},
		{"reason 1001", `SELECT walhook.deactivate($1, $2)`, []any{id, strings.Repeat("r", 1001)}, "reason is too long: 1001 characters, the limit is 1000"},
		{"reason 1000", `SELECT walhook.deactivate($1, $2)`, []any{id, strings.Repeat("r", 1000)}, ""},
		{"remove_owner 1 MB", `SELECT walhook.remove_owner($1)`, []any{strings.Repeat("o", mb)}, "owner is too long: 1048576 characters, the limit is 200"},
		{"remove_owner 200", `SELECT walhook.remove_owner($1)`, []any{strings.Repeat("x", 200)}, ""},
		{"set_site 1 MB", `SELECT walhook.set_site($1)`, []any{site(mb)}, "site is too long: 1048576 characters, the limit is 1000"},
		{"set_site 1000", `SELECT walhook.set_site($1)`, []any{site(1000)}, ""},
		// A path that bypasses the functions meets the same limits.
		{"table insert owner 1 MB", `INSERT INTO walhook.subscriptions (owner, event, target_url) VALUES ($1, 'order.created', 'https://example.com/h')`, []any{strings.Repeat("o", mb)}, "owner is too long: 1048576 characters, the limit is 200"},
		{"table update url 2049", `UPDATE walhook.subscriptions SET target_url = $2 WHERE id = $1`, []any{id, url(2049)}, "target_url is too long: 2049 characters, the limit is 2048"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := conn.Exec(t.Context(), tc.sql, tc.args...)
			checkRefusal(t, err, tc.wantMsg)
		})
	}
}

// TestURLAndSiteShape: ports out of range, percent-encoded and non-ASCII
// hosts and dot segments in sites are refused; their valid neighbours are not.
func TestURLAndSiteShape(t *testing.T) {
	t.Parallel()
	conn, _ := installed(t)
	tests := []struct {
		name    string
		url     string
		site    string
		wantMsg string
	}{
		{"port 0", "https://example.com:0/h", "/", "port 0 is out of range (1-65535)"},
		{"port 65536", "https://example.com:65536/h", "/", "port 65536 is out of range (1-65535)"},
		{"port 99999", "https://example.com:99999/h", "/", "port 99999 is out of range"},
		{"port 00000", "https://example.com:00000/h", "/", "port 00000 is out of range"},
		{"port 1", "https://example.com:1/h", "/", ""},
		{"port 65535", "https://example.com:65535/h", "/", ""},
		{"port on IPv6", "https://[::1]:8443/h", "/", ""},
		{"port 0 on IPv6", "https://[::1]:0/h", "/", "port 0 is out of range"},
		{"percent-encoded host", "https://exa%6Dple.com/h", "/", "a percent-encoded host is not supported"},
		{"percent-encoded dot", "https://example%2Ecom/h", "/", "a percent-encoded host is not supported"},
		{"percent in path is fine", "https://example.com/a%20b", "/", ""},
		{"IDN host", "https://bücher.example/h", "/", "is not ASCII; pass its punycode (xn--) form"},
		{"IDN host with port", "https://例え.jp:8443/h", "/", "is not ASCII; pass its punycode (xn--) form"},
		{"punycode host", "https://xn--bcher-kva.example/h", "/", ""},
		{"dot-dot segment", "https://example.com/h", "/acme/../east", "'.' and '..' segments are not allowed"},
		{"dot-dot at end", "https://example.com/h", "/acme/..", "'.' and '..' segments are not allowed"},
		{"dot-dot alone", "https://example.com/h", "/..", "'.' and '..' segments are not allowed"},
		{"dot segment", "https://example.com/h", "/./acme", "'.' and '..' segments are not allowed"},
		{"dot at end with slash", "https://example.com/h", "/acme/./", "'.' and '..' segments are not allowed"},
		{"three dots is a name", "https://example.com/h", "/acme/...", ""},
		{"dotted names", "https://example.com/h", "/.well-known/a..b", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := conn.Exec(t.Context(), `SELECT walhook.subscribe('order.created', $1, 'o', $2)`, tc.url, tc.site)
			checkRefusal(t, err, tc.wantMsg)
		})
	}
	_, err := conn.Exec(t.Context(), `SELECT walhook.set_site('/a/../b')`)
	checkRefusal(t, err, "'.' and '..' segments are not allowed")
}

// TestCloseMatchesStillSuggested: the length prefilter of the close-match
// search keeps every suggestion within reach.
func TestCloseMatchesStillSuggested(t *testing.T) {
	t.Parallel()
	conn, _ := installed(t)
	for _, tc := range []struct{ event, want string }{
		{"order.craeted", "did you mean order.created"},
		{"order.create", "did you mean order.created"},
		{"ordr.updated", "did you mean order.updated"},
		{"order.createdxyz", "did you mean order.created"},
	} {
		_, err := conn.Exec(t.Context(), `SELECT walhook.subscribe($1, 'https://example.com/h', 'o')`, tc.event)
		checkRefusal(t, err, tc.want)
	}
}

// checkRefusal fails unless err is a 22023 whose message contains wantMsg,
// or, for an empty wantMsg, unless err is nil.
func checkRefusal(t *testing.T, err error, wantMsg string) {
	t.Helper()
	if wantMsg == "" {
		if err != nil {
			t.Fatalf("error = %v, want none", err)
		}
		return
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("error = %v, want SQLSTATE 22023 containing %q", err, wantMsg)
	}
	if pgErr.Code != "22023" || !strings.Contains(pgErr.Message, wantMsg) {
		msg := pgErr.Message
		if len(msg) > 300 {
			msg = msg[:300] + "..."
		}
		t.Fatalf("error = %s %q, want 22023 containing %q", pgErr.Code, msg, wantMsg)
	}
}
