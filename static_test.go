package walhook

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/demo"
	"github.com/walhook/walhook/internal/e2e"
)

// writeStatic rewrites the env's config as the demo config plus a
// subscriptions: block.
func (e *env) writeStatic(block string) {
	e.T.Helper()
	if err := os.WriteFile(e.CfgPath, []byte(string(demo.Config)+"\nsubscriptions:\n"+block), 0o600); err != nil {
		e.T.Fatal(err)
	}
}

// staticID returns the id and state of the static subscription name.
func (e *env) staticID(name string) (id string, events []string, active bool) {
	e.T.Helper()
	err := e.Conn.QueryRow(context.Background(), `SELECT id::text, events, active FROM walhook.subscriptions WHERE static_name = $1`, name).
		Scan(&id, &events, &active)
	if err != nil {
		e.T.Fatalf("read static subscription %s: %v", name, err)
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
    target: ` + e.Recv.URL + `/audit
    owner: "1"
    secret: ${WALHOOK_TEST_AUDIT_SECRET}
  - name: tenant7
    events: [customer.created]
    target: ` + e.Recv.URL + `/t7
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
		_, err := e.Conn.Exec(ctx, r.sql, audit)
		if code, msg := sqlState(err); code != "22023" || !strings.Contains(msg, `static, declared as 'audit' under subscriptions:`) {
			t.Fatalf("%s(static) = %v, want 22023 naming the config entry", r.name, err)
		}
	}
	var removed int
	if err := e.Conn.QueryRow(ctx, `SELECT walhook.remove_owner('1')`).Scan(&removed); err != nil || removed != 0 {
		t.Fatalf("remove_owner('1') = %d, %v; want 0: it leaves static subscriptions", removed, err)
	}

	// Delivered and judged like any other: owner 2 sees tenant 7 only.
	e.start()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'seven'), (2, 8, 'eight')`)
	e.Recv.WaitRows(t, "/audit", 1, 2)
	e.Recv.WaitRows(t, "/t7", 1)
	got := e.Recv.Deliveries("/audit")[0]
	if got.Header.Get("webhook-subscription") != audit || !strings.HasPrefix(got.Header.Get("webhook-signature"), "v1,") {
		t.Fatalf("audit request headers %v, want its id and a signature from the config's secret", got.Header)
	}
	e2e.WaitFor(t, 10*time.Second, "three attempts recorded", func() bool {
		return e.Count(`SELECT count(*) FROM walhook.attempts`) == 3
	})
	if n := len(e.Recv.Deliveries("/t7")); n != 1 {
		t.Fatalf("/t7 got %d requests, want 1: owner 2 may not see tenant 8", n)
	}

	// Change one, remove the other from the file.
	e.writeStatic(`  - name: audit
    events: ["customer.*", "order.created"]
    target: ` + e.Recv.URL + `/audit
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
	e.Exec(`INSERT INTO public.orders (id, customer_id, tenant_id, total) VALUES (10, 1, 7, 5)`)
	e.Recv.WaitRows(t, "/audit", 10)

	// No longer declared: it may not be activated, but may be removed.
	_, err := e.Conn.Exec(ctx, `SELECT walhook.activate($1)`, t7)
	if code, _ := sqlState(err); code != "22023" {
		t.Fatalf("activate(removed static) = %v, want 22023", err)
	}
	st, err := Status(ctx, e.Conn, e.Slot)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	var listed []string
	for _, s := range st.Static {
		listed = append(listed, fmt.Sprintf("%s %s %v %s", s.Name, strings.Join(s.Events, ","), s.Active, s.StatusMessage))
	}
	if want := []string{"audit customer.*,order.created true ", "tenant7 customer.created false Deactivated: no longer declared under subscriptions: in the config"}; !slices.Equal(listed, want) {
		t.Fatalf("Status().Static = %q, want %q", listed, want)
	}
	var ok bool
	if err := e.Conn.QueryRow(ctx, `SELECT walhook.unsubscribe($1)`, t7).Scan(&ok); err != nil || !ok {
		t.Fatalf("unsubscribe(removed static) = %v, %v; want true", ok, err)
	}
}

// TestStaticSubscriptionRefusedByTheDatabase: a declaration the SQL API
// would refuse fails install with the entry's file:line.
func TestStaticSubscriptionRefusedByTheDatabase(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.writeStatic("  - name: bad\n    events: [order.created]\n    target: https://user:pw@example.com/h\n    owner: \"1\"\n")
	_, err := Install(context.Background(), e.Conn, e.Config(), InstallOptions{Slot: e.Slot, AllowHTTP: true})
	if err == nil || !strings.Contains(err.Error(), e.CfgPath+":") || !strings.Contains(err.Error(), "must not contain credentials") {
		t.Fatalf("install = %v, want the refusal with the config's file:line", err)
	}
}
