package main

import (
	"bytes"
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// writeStatic rewrites the env's config as the demo config plus a
// subscriptions: block.
func (e *env) writeStatic(block string) {
	e.t.Helper()
	if err := os.WriteFile(e.cfgPath, []byte(string(demoConfig)+"\nsubscriptions:\n"+block), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

// staticID returns the id and state of the static subscription name.
func (e *env) staticID(name string) (id string, events []string, active bool) {
	e.t.Helper()
	err := e.conn.QueryRow(context.Background(), `SELECT id::text, events, active FROM walhook.subscriptions WHERE static_name = $1`, name).
		Scan(&id, &events, &active)
	if err != nil {
		e.t.Fatalf("read static subscription %s: %v", name, err)
	}
	return id, events, active
}

// TestStaticSubscriptions: install creates, updates and deactivates the
// subscriptions declared in the config; the SQL API refuses to change them;
// they are delivered to, and judged by the acl rules, like any other; status
// lists them.
func TestStaticSubscriptions(t *testing.T) {
	// Not parallel: t.Setenv.
	const secret = "whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"
	t.Setenv("WALHOOK_TEST_AUDIT_SECRET", secret)
	e := newEnv(t, "")
	ctx := context.Background()
	e.writeStatic(`  - name: audit
    events: ["customer.*"]
    target: ` + e.recv.URL + `/audit
    owner: "1"
    secret: ${WALHOOK_TEST_AUDIT_SECRET}
  - name: tenant7
    events: [customer.created]
    target: ` + e.recv.URL + `/t7
    owner: "2"
`)
	changes := strings.Join(e.install(), "\n")
	for _, want := range []string{"created static subscription audit", "created static subscription tenant7"} {
		if !strings.Contains(changes, want) {
			t.Fatalf("install changes:\n%s\nwant a line %q", changes, want)
		}
	}
	if again := e.install(); len(again) != 0 {
		t.Fatalf("a second install changed %q, want nothing", again)
	}
	audit, _, _ := e.staticID("audit")
	t7, _, _ := e.staticID("tenant7")

	// The SQL API refuses to change or remove them, naming the config entry.
	refusals := []struct{ name, sql string }{
		{"unsubscribe", `SELECT walhook.unsubscribe($1)`},
		{"deactivate", `SELECT walhook.deactivate($1)`},
		{"set_events", `SELECT walhook.set_events($1, ARRAY['order.*'])`},
		{"rotate_secret", `SELECT walhook.rotate_secret($1)`},
	}
	for _, r := range refusals {
		_, err := e.conn.Exec(ctx, r.sql, audit)
		if code, msg := sqlState(err); code != "22023" || !strings.Contains(msg, `static, declared as 'audit' under subscriptions:`) {
			t.Fatalf("%s(static) = %v, want 22023 naming the config entry", r.name, err)
		}
	}
	var removed int
	if err := e.conn.QueryRow(ctx, `SELECT walhook.remove_owner('1')`).Scan(&removed); err != nil || removed != 0 {
		t.Fatalf("remove_owner('1') = %d, %v; want 0: it leaves static subscriptions", removed, err)
	}

	// Delivered and judged like any other: owner 2 sees tenant 7 only.
	e.start()
	e.exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'seven'), (2, 8, 'eight')`)
	e.recv.waitRows(t, "/audit", 1, 2)
	e.recv.waitRows(t, "/t7", 1)
	got := e.recv.deliveries("/audit")[0]
	if got.Header.Get("webhook-subscription") != audit || !strings.HasPrefix(got.Header.Get("webhook-signature"), "v1,") {
		t.Fatalf("audit request headers %v, want its id and a signature from the config's secret", got.Header)
	}
	waitFor(t, 10*time.Second, "three attempts recorded", func() bool {
		return e.count(`SELECT count(*) FROM walhook.attempts`) == 3
	})
	if n := len(e.recv.deliveries("/t7")); n != 1 {
		t.Fatalf("/t7 got %d requests, want 1: owner 2 may not see tenant 8", n)
	}

	// Change one, remove the other from the file.
	e.writeStatic(`  - name: audit
    events: ["customer.*", "order.created"]
    target: ` + e.recv.URL + `/audit
    owner: "1"
    secret: ${WALHOOK_TEST_AUDIT_SECRET}
`)
	changes = strings.Join(e.install(), "\n")
	for _, want := range []string{"updated static subscription audit", "deactivated static subscription tenant7: no longer in the config"} {
		if !strings.Contains(changes, want) {
			t.Fatalf("install changes:\n%s\nwant a line %q", changes, want)
		}
	}
	if id, events, active := e.staticID("audit"); id != audit || !active || !slices.Equal(events, []string{"customer.*", "order.created"}) {
		t.Fatalf("audit after the change = %s %q active %v; want the same id with the new events", id, events, active)
	}
	if _, _, active := e.staticID("tenant7"); active {
		t.Fatal("tenant7 still active after leaving the config")
	}
	e.exec(`INSERT INTO public.orders (id, customer_id, tenant_id, total) VALUES (10, 1, 7, 5)`)
	e.recv.waitRows(t, "/audit", 10)

	// No longer declared: it may not be activated, but may be removed.
	_, err := e.conn.Exec(ctx, `SELECT walhook.activate($1)`, t7)
	if code, _ := sqlState(err); code != "22023" {
		t.Fatalf("activate(removed static) = %v, want 22023", err)
	}
	var st bytes.Buffer
	if err := run(ctx, []string{"status", "--database-url", e.dsn, "--slot", e.slot}, &st, &st); err != nil {
		t.Fatalf("status: %v", err)
	}
	for _, want := range []string{"STATIC SUBSCRIPTIONS", "audit", "customer.*,order.created", "tenant7", "inactive: Deactivated: no longer declared"} {
		if !strings.Contains(st.String(), want) {
			t.Fatalf("status output:\n%s\nwant %q", st.String(), want)
		}
	}
	var ok bool
	if err := e.conn.QueryRow(ctx, `SELECT walhook.unsubscribe($1)`, t7).Scan(&ok); err != nil || !ok {
		t.Fatalf("unsubscribe(removed static) = %v, %v; want true", ok, err)
	}
}

// TestStaticSubscriptionRefusedByTheDatabase: a declaration the SQL API
// would refuse fails install with the entry's file:line.
func TestStaticSubscriptionRefusedByTheDatabase(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.writeStatic("  - name: bad\n    events: [order.created]\n    target: https://user:pw@example.com/h\n    owner: \"1\"\n")
	cfg, mapper, err := loadConfig(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	_, err = install(context.Background(), e.conn, common{Slot: e.slot, Publication: "walhook", AllowHTTP: true}, cfg, mapper)
	if err == nil || !strings.Contains(err.Error(), e.cfgPath+":") || !strings.Contains(err.Error(), "must not contain credentials") {
		t.Fatalf("install = %v, want the refusal with the config's file:line", err)
	}
}
