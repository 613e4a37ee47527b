package walhook

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/e2e"
)

// truncateConfig maps orders with the truncate verb and a rule that
// guards its row columns with has(), customers without the verb, and notes
// with the verb and a rule that reads row.tenant_id unguarded.
const truncateConfig = `owners:
  query: SELECT id::text AS id, tenant_ids AS tenants, is_admin AS admin FROM app.users WHERE id::text = ANY($1)
  watch: [app.users]
  keys: {app.users: id}
tables:
  - table: public.orders
    noun: order
    site: tenant_path
    verbs: {insert: created, update: updated, delete: deleted, truncate: truncated}
    acl: "has(row.tenant_id) ? (row.tenant_id in owner.tenants || owner.admin) : owner.admin"
  - table: public.customers
    noun: customer
    site: tenant_path
    verbs: {insert: created}
    acl: row.tenant_id in owner.tenants || owner.admin
  - table: public.notes
    noun: note
    verbs: {insert: created, truncate: truncated}
    acl: row.tenant_id in owner.tenants
`

// TestTruncateEvent: with the truncate verb, a TRUNCATE (CASCADE
// included) sends one <noun>.truncated per table and per subscription its
// owner's rule allows with an empty row, at any site; a rule that fails on
// the empty row holds the delivery (cause rule); a table without the verb
// sends nothing although truncates are published. The publication
// publishes truncates, and drift that stops it is healed.
func TestTruncateEvent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, truncateConfig, `CREATE TABLE public.notes (id bigint PRIMARY KEY, tenant_id bigint NOT NULL)`)
	ctx := context.Background()
	var pubTruncate bool
	if err := e.Conn.QueryRow(ctx, `SELECT pubtruncate FROM pg_publication WHERE pubname = $1`, e2e.Publication).Scan(&pubTruncate); err != nil || !pubTruncate {
		t.Fatalf("pubtruncate = %v, %v; want true", pubTruncate, err)
	}
	e.subscribeEvents("/admin", "", "order.*")            // owner 1, an admin, at /
	e.Subscribe("order.truncated", "/site", "/acme/east") // owner 1 at another site
	e.SubscribeAs("2", "order.truncated", "/tenant")      // owner 2, tenant 7 only: the rule denies
	e.subscribeEvents("/cust", "", "customer.*")          // no customer truncate event
	e.SubscribeAs("2", "note.truncated", "/note")         // the rule fails on the empty row: held

	e.start()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, tenant_path, name) VALUES (1, 7, '/acme/east', 'Ada')`)
	e.Exec(`INSERT INTO public.orders (id, customer_id, tenant_id, tenant_path, total) VALUES (10, 1, 7, '/acme/east', 5)`)
	e.Exec(`INSERT INTO public.notes (id, tenant_id) VALUES (1, 7)`)
	e.Recv.Wait(t, "/admin", 1)
	// orders goes with customers by its foreign key.
	e.Exec(`TRUNCATE public.customers, public.notes CASCADE`)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (2, 7, 'after')`)
	e.Recv.WaitRows(t, "/cust", 1, 2)
	target := e.CurrentLSN()
	e2e.WaitFor(t, 30*time.Second, "the slot to pass the truncate", func() bool { return e.Confirmed() >= target })

	admin := e.Recv.ByEvent(t, "/admin")
	tr, ok := admin["order.truncated"]
	if !ok || len(admin) != 2 {
		t.Fatalf("/admin got %d events (%v), want order.created and one order.truncated", len(admin), admin)
	}
	env := tr.Envelope(t)
	if data, ok := env["data"].(map[string]any); !ok || len(data) != 0 {
		t.Fatalf("order.truncated data = %v, want {}", env["data"])
	}
	if env["site"] != "/" || env["id"] != tr.Header.Get("webhook-id") {
		t.Fatalf("order.truncated site %v, id %v (webhook-id %s); want site / and the same id", env["site"], env["id"], tr.Header.Get("webhook-id"))
	}
	if _, ok := env["previous"]; ok {
		t.Fatalf("order.truncated has previous: %v", env)
	}
	site := e.Recv.Deliveries("/site")
	if len(site) != 1 || site[0].Header.Get("webhook-id") != tr.Header.Get("webhook-id") {
		t.Fatalf("/site got %d requests, want the one order.truncated with id %s", len(site), tr.Header.Get("webhook-id"))
	}
	if n := len(e.Recv.Deliveries("/tenant")); n != 0 {
		t.Fatalf("/tenant got %d requests, want none: its owner's rule denies a truncate", n)
	}
	if n := len(e.Recv.Deliveries("/note")); n != 0 {
		t.Fatalf("/note got %d requests, want none: held", n)
	}
	if cust := e.Recv.Deliveries("/cust"); len(cust) != 2 {
		t.Fatalf("/cust got %d requests, want the two customer.created and no truncate", len(cust))
	}
	var cause, event, reason string
	if err := e.Conn.QueryRow(ctx, `SELECT cause, event, reason FROM walhook.held`).Scan(&cause, &event, &reason); err != nil ||
		cause != "rule" || event != "note.truncated" || !strings.Contains(reason, "tenant_id") {
		t.Fatalf("held = %s %s %q, %v; want cause rule for note.truncated naming tenant_id", cause, event, reason, err)
	}

	// Drift: a publication that stops publishing truncates is put back.
	e.Exec(`ALTER PUBLICATION ` + e2e.Publication + ` SET (publish = 'insert, update, delete')`)
	e2e.WaitFor(t, 30*time.Second, "the publication to publish truncates again", func() bool {
		return e.Count(`SELECT count(*) FROM pg_publication WHERE pubname = $1 AND pubtruncate`, e2e.Publication) == 1
	})
}

// TestTruncateOffByDefault: without the truncate verb the publication does
// not publish truncates and a TRUNCATE of a mapped table sends nothing,
// even to a subscription to every event.
func TestTruncateOffByDefault(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	if n := e.Count(`SELECT count(*) FROM pg_publication WHERE pubname = $1 AND pubtruncate`, e2e.Publication); n != 0 {
		t.Fatalf("the publication publishes truncates without a table that maps them")
	}
	e.subscribeEvents("/all", "", "*")
	e.start()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'Ada')`)
	e.Exec(`TRUNCATE public.customers CASCADE`)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (2, 7, 'after')`)
	e.Recv.WaitRows(t, "/all", 1, 2)
	target := e.CurrentLSN()
	e2e.WaitFor(t, 30*time.Second, "the slot to pass the truncate", func() bool { return e.Confirmed() >= target })
	for _, d := range e.Recv.Deliveries("/all") {
		if ev := d.Envelope(t)["event"]; ev != "customer.created" {
			t.Fatalf("/all got %v, want customer.created only", ev)
		}
	}
}

// TestTruncatePartitionedTable: a TRUNCATE of a mapped partitioned table
// sends one <noun>.truncated, for the table, not one per partition; a
// TRUNCATE of one partition alone sends nothing: PostgreSQL publishes
// truncates via the partitioned table only for the table itself (a limit
// the README names).
func TestTruncatePartitionedTable(t *testing.T) {
	t.Parallel()
	cfg := "tables:\n  - table: public.items\n    noun: item\n    verbs: {insert: created, truncate: truncated}\n    acl: \"true\"\n"
	e := newEnv(t, cfg, partitionSchema)
	e.subscribeEvents("/all", "", "*")
	e.start()
	e.Exec(`INSERT INTO public.items VALUES (1, 'eu', 'a', ''), (2, 'us', 'b', '')`)
	e.Exec(`TRUNCATE public.items`)
	e.Exec(`INSERT INTO public.items VALUES (3, 'us', 'c', '')`)
	e.Exec(`TRUNCATE public.items_us`)
	e.Exec(`INSERT INTO public.items VALUES (4, 'eu', 'd', '')`)
	e.Recv.WaitRows(t, "/all", 1, 2, 3, 4)
	target := e.CurrentLSN()
	e2e.WaitFor(t, 30*time.Second, "the slot to pass the truncates", func() bool { return e.Confirmed() >= target })
	n := 0
	for _, d := range e.Recv.Deliveries("/all") {
		if d.Envelope(t)["event"] == "item.truncated" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d item.truncated sent, want 1: for the partitioned table's TRUNCATE, none for the partition's", n)
	}
}
