package schema

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/mapping"
)

// TestReconcile: Reconcile creates, updates (keeping the id, the old secret
// signing for a while) and deactivates static subscriptions, reports each
// change once, and refuses what subscribe() refuses, naming the entry.
func TestReconcile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := newConn(t)
	_, err := Install(ctx, conn, Options{
		Events:   []Event{{Name: "order.created", Table: "public.orders", Operation: "insert"}, {Name: "order.deleted", Table: "public.orders", Operation: "delete"}},
		Settings: map[string]string{"allow_http": "false"},
	})
	if err != nil {
		t.Fatal(err)
	}
	const s1, s2 = "whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "whsec_dGVyY2VzdGVyY2VzdGVyY2VzdGVyY2VzdA=="
	audit := &mapping.StaticSubscription{Name: "audit", Events: []string{"*"}, Target: "https://audit.example.com/h",
		Owner: "system", Site: "/", Dialect: "default", Secret: s1, Pos: "walhook.yaml:30"}
	other := &mapping.StaticSubscription{Name: "other", Events: []string{"order.created"}, Target: "https://o.example.com/h",
		Owner: "7", Site: "/acme", Dialect: "default", Pos: "walhook.yaml:36"}
	reconcile := func(statics ...*mapping.StaticSubscription) []string {
		t.Helper()
		changes, err := Reconcile(ctx, conn, statics)
		if err != nil {
			t.Fatalf("Reconcile() error: %v", err)
		}
		return changes
	}
	row := func(name string) (id string, events []string, secret, prev *string, active bool) {
		t.Helper()
		err := conn.QueryRow(ctx, `SELECT id::text, events, secret, previous_secret, active FROM walhook.subscriptions WHERE static_name = $1`, name).
			Scan(&id, &events, &secret, &prev, &active)
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		return
	}

	if got, want := reconcile(audit, other), []string{"created static subscription audit", "created static subscription other"}; !slices.Equal(got, want) {
		t.Fatalf("first Reconcile() = %q, want %q", got, want)
	}
	if got := reconcile(audit, other); len(got) != 0 {
		t.Fatalf("Reconcile() again = %q, want no changes", got)
	}
	id, _, _, _, _ := row("audit")

	changed := *audit
	changed.Events, changed.Secret = []string{"order.*"}, s2
	if got, want := reconcile(&changed), []string{"updated static subscription audit", "deactivated static subscription other: no longer in the config"}; !slices.Equal(got, want) {
		t.Fatalf("Reconcile(changed, other removed) = %q, want %q", got, want)
	}
	newID, events, secret, prev, active := row("audit")
	if newID != id || !slices.Equal(events, []string{"order.*"}) || secret == nil || *secret != s2 || prev == nil || *prev != s1 || !active {
		t.Fatalf("audit after the change: id %s events %q secret %v previous %v active %v; want the same id, new events and secret, the old one still signing",
			newID, events, secret, prev, active)
	}
	if _, _, _, _, active := row("other"); active {
		t.Fatal("other still active after leaving the config")
	}
	if got := reconcile(&changed); len(got) != 0 {
		t.Fatalf("Reconcile() after removal = %q, want no changes", got)
	}
	// Declared again, it comes back active with its id.
	if got := reconcile(&changed, other); !slices.Equal(got, []string{"updated static subscription other"}) {
		t.Fatalf("Reconcile(other back) = %q", got)
	}
	if _, _, _, _, active := row("other"); !active {
		t.Fatal("other not active after coming back to the config")
	}

	bad := *other
	bad.Target = "http://o.example.com/h"
	_, err = Reconcile(ctx, conn, []*mapping.StaticSubscription{&changed, &bad})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22023" || !strings.Contains(err.Error(), "walhook.yaml:36: subscriptions: other:") ||
		!strings.Contains(pgErr.Message, "http:// is not allowed") {
		t.Fatalf("Reconcile(http:// target) = %v, want 22023 naming walhook.yaml:36", err)
	}
	if _, _, _, _, active := row("other"); !active {
		t.Fatal("a failed Reconcile changed other: it must change nothing")
	}
}

// TestUpgradeKeepsSubscriptions: subscriptions made before event lists
// existed are migrated in place, their event the list's one entry.
func TestUpgradeKeepsSubscriptions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := newConn(t)
	opts := Options{Events: []Event{{Name: "order.created", Table: "public.orders", Operation: "insert"}}}
	if _, err := install(ctx, conn, opts, 6); err != nil {
		t.Fatal(err)
	}
	var id string
	if err := conn.QueryRow(ctx, `SELECT walhook.subscribe('order.created', 'https://example.com/h', '1')::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	if _, err := Install(ctx, conn, opts); err != nil {
		t.Fatal(err)
	}
	var events []string
	var event string
	if err := conn.QueryRow(ctx, `SELECT events, event FROM walhook.subscriptions WHERE id = $1`, id).Scan(&events, &event); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(events, []string{"order.created"}) || event != "order.created" {
		t.Fatalf("after the upgrade: events %q, event %q; want [order.created] and order.created", events, event)
	}
}
