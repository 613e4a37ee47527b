package walhook

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/demo"
	"github.com/walhook/walhook/internal/e2e"
)

// heldRows returns the held deliveries as "cause status", oldest first.
func (e *env) heldRows() []string {
	e.T.Helper()
	rows, err := e.Conn.Query(context.Background(), `SELECT cause || ' ' || status FROM walhook.held ORDER BY id`)
	if err != nil {
		e.T.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			e.T.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// waitHeld waits until n deliveries are held (status held).
func (e *env) waitHeld(n int) {
	e.T.Helper()
	e2e.WaitFor(e.T, 30*time.Second, "held deliveries", func() bool {
		return e.Count(`SELECT count(*) FROM walhook.held WHERE status = 'held'`) == n
	})
}

// writeConfig replaces the env's config file.
func (e *env) writeConfig(cfg string) {
	e.T.Helper()
	if err := os.WriteFile(e.CfgPath, []byte(cfg), 0o600); err != nil {
		e.T.Fatal(err)
	}
}

func replace(t *testing.T, s, old, repl string) string {
	t.Helper()
	if !strings.Contains(s, old) {
		t.Fatalf("config has no %q", old)
	}
	return strings.Replace(s, old, repl, 1)
}

// TestRuleErrorHoldsUntilFixed: a rule that passes every check but fails
// on the rows it meets (here int() of a status that is not a number; a typo
// such as owner.tenant is refused by the start's check instead) fails for
// the owners it does not allow otherwise. Their deliveries are held, not
// denied: nothing is sent, the slot moves on, and a start with the fixed
// config sends them.
func TestRuleErrorHoldsUntilFixed(t *testing.T) {
	t.Parallel()
	good := string(demo.Config)
	typo := strings.Replace(good, "row.tenant_id in owner.tenants || owner.admin", "int(row.status) > 0 || owner.admin", 1)
	e := newEnv(t, typo)
	e.SubscribeAs("2", "order.created", "/bob")
	e.start()
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) VALUES (1, 7, 10)`)
	e.waitHeld(1)
	target := e.CurrentLSN()
	e2e.WaitFor(t, 30*time.Second, "the slot to pass the held change", func() bool { return e.Confirmed() >= target })
	if got := e.Recv.Deliveries(""); len(got) != 0 {
		t.Fatalf("%d deliveries while held, want none", len(got))
	}
	var reason string
	if err := e.Conn.QueryRow(context.Background(), `SELECT reason FROM walhook.held`).Scan(&reason); err != nil || !strings.Contains(reason, "int") {
		t.Fatalf("held reason %q, %v: want the rule's error", reason, err)
	}

	e.stop()
	e.writeConfig(good)
	e.start()
	e.Recv.WaitRows(t, "/bob", 1)
	e2e.WaitFor(t, 30*time.Second, "the held delivery to be released", func() bool {
		got := e.heldRows()
		return len(got) == 1 && got[0] == "rule released"
	})
}

// TestExcludedColumnRenamedHolds: renaming a column the config excludes
// would send it under its new name; the table no longer matches the config,
// so its changes are held until the config names the new column, then sent
// without it.
func TestExcludedColumnRenamedHolds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.SubscribeAs("1", "order.created", "/o")
	svc := e.start()
	e2e.WaitFor(t, 30*time.Second, "the service to stream", func() bool { return svc.Health().Ready })
	e.Exec(`ALTER TABLE public.orders RENAME COLUMN internal_note TO note_renamed`)
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total, note_renamed) VALUES (1, 7, 10, 'not for receivers')`)
	e.waitHeld(1)
	if got := e.heldRows(); got[0] != "schema held" {
		t.Fatalf("held %q, want a schema hold", got)
	}
	if got := e.Recv.Deliveries(""); len(got) != 0 {
		t.Fatalf("%d deliveries while held, want none", len(got))
	}
	e.stop()
	e.writeConfig(replace(t, string(demo.Config), "columns: {exclude: [internal_note]}", "columns: {exclude: [note_renamed]}"))
	e.start()
	d := e.Recv.Wait(t, "/o", 1)[0]
	if strings.Contains(string(d.Body), "not for receivers") || strings.Contains(string(d.Body), "note_renamed") {
		t.Fatalf("released body %s carries the excluded column", d.Body)
	}
}

// TestFailingOwnersQueryHoldsOnlyWhatNeedsOwners: a renamed column of the
// owners table makes owners.query fail when the owners' attributes are next
// refreshed (a write to the watched table). The application's write still
// succeeds; walhook no longer knows those owners' attributes, so the
// deliveries that need them are held — no crash loop — while a table with
// acl "true" flows on. walhook.release_held() refreshes the owners once the
// query works again and sends the held ones.
func TestFailingOwnersQueryHoldsOnlyWhatNeedsOwners(t *testing.T) {
	t.Parallel()
	cfg := replace(t, string(demo.Config), "columns: {include: [id, tenant_id, tenant_path, name, email, created_at]}\n    acl: row.tenant_id in owner.tenants || owner.admin",
		"columns: {include: [id, tenant_id, tenant_path, name, email, created_at]}\n    acl: \"true\"")
	e := newEnv(t, cfg)
	e.SubscribeAs("2", "order.created", "/orders")
	e.SubscribeAs("2", "customer.created", "/customers")
	svc := e.start()
	e2e.WaitFor(t, 30*time.Second, "the service to stream", func() bool { return svc.Health().Ready })
	e.Exec(`ALTER TABLE app.users RENAME COLUMN tenant_ids TO tenants_renamed`)
	// The application's own write succeeds, though walhook's query fails.
	e.Exec(`UPDATE app.users SET name = 'Bob' WHERE id = 2`)
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) VALUES (1, 7, 10)`)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'flows')`)
	e.Recv.Wait(t, "/customers", 1)
	e.waitHeld(1)
	if got := e.heldRows(); got[0] != "owners held" {
		t.Fatalf("held %q, want an owners hold", got)
	}
	if !svc.Health().Ready {
		t.Fatalf("Health() = %+v: a failing owners query must not stop the pipeline", svc.Health())
	}
	e.Exec(`ALTER TABLE app.users RENAME COLUMN tenants_renamed TO tenant_ids`)
	if n := e.Count(`SELECT walhook.release_held('public.orders')`); n != 1 {
		t.Fatalf("release_held() = %d, want 1", n)
	}
	e.Recv.WaitRows(t, "/orders", 1)
}

// TestDiscardHeld: discard_held drops held deliveries on purpose, recorded,
// and refuses to discard everything without a filter.
func TestDiscardHeld(t *testing.T) {
	t.Parallel()
	e := newEnv(t, strings.Replace(string(demo.Config), "row.tenant_id in owner.tenants || owner.admin", "int(row.status) > 0 || owner.admin", 1))
	e.SubscribeAs("2", "order.created", "/o")
	e.start()
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) VALUES (1, 7, 10)`)
	e.waitHeld(1)
	var st *StatusReport
	e2e.WaitFor(t, 30*time.Second, "status to list the leader", func() bool {
		var err error
		if st, err = Status(context.Background(), e.Conn, e.Slot); err != nil {
			t.Fatal(err)
		}
		return len(st.Processes) == 1 && st.Processes[0].Role == RoleLeader && st.Processes[0].Streaming
	})
	if st.Held["rule"] != 1 || st.Processes[0].Slot != e.Slot || !st.Processes[0].Streaming {
		t.Fatalf("Status() held %v processes %+v, want 1 rule hold and the streaming leader", st.Held, st.Processes)
	}
	if _, err := e.Conn.Exec(context.Background(), `SELECT walhook.discard_held()`); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("discard_held() = %v, want a refusal", err)
	}
	if n := e.Count(`SELECT walhook.discard_held(table_name => 'public.orders')`); n != 1 {
		t.Fatalf("discard_held() = %d, want 1", n)
	}
	var res string
	if err := e.Conn.QueryRow(context.Background(), `SELECT status || ': ' || resolution FROM walhook.held`).Scan(&res); err != nil || !strings.HasPrefix(res, "discarded: discarded by ") {
		t.Fatalf("held row %q, %v", res, err)
	}
}

// TestDroppedColumnHoldsUntilFixed: a column the acl rule reads is dropped
// while walhook runs. The table no longer matches the config: its changes
// are held (not judged on a row that lacks the column), and a start with a
// config that no longer reads it sends them.
func TestDroppedColumnHoldsUntilFixed(t *testing.T) {
	t.Parallel()
	cfg := strings.Replace(string(demo.Config), "row.tenant_id in owner.tenants || owner.admin", "row.status != 'secret' && (row.tenant_id in owner.tenants || owner.admin)", 1)
	e := newEnv(t, cfg)
	e.SubscribeAs("2", "order.created", "/bob")
	svc := e.start()
	e2e.WaitFor(t, 30*time.Second, "the service to stream", func() bool { return svc.Health().Ready })
	e.Exec(`ALTER TABLE public.orders DROP COLUMN status CASCADE`)
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) VALUES (1, 7, 10)`)
	e.waitHeld(1)
	if got := e.heldRows(); got[0] != "schema held" {
		t.Fatalf("held %q, want a schema hold", got)
	}
	if got := e.Recv.Deliveries(""); len(got) != 0 {
		t.Fatalf("%d deliveries while held, want none", len(got))
	}
	e.stop()
	// The fix: the rule no longer reads status, and order.paid (which did)
	// goes.
	fixed := strings.Replace(string(demo.Config), `    events:
      - name: order.paid
        on: update
        when: new.status == 'paid' && old.status != 'paid'
`, "", 1)
	e.writeConfig(fixed)
	e.install()
	e.start()
	e.Recv.WaitRows(t, "/bob", 1)
}
