package walhook

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/e2e"
)

func TestACLDeliversOnlyVisibleRows(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "", `INSERT INTO app.users (id, name, tenant_ids) VALUES (3, 'Cy (tenant 8)', '{8}')`)
	for _, owner := range []string{"1", "2", "3", "99"} {
		for _, ev := range []string{"order.created", "order.updated", "order.deleted", "order.paid"} {
			e.SubscribeAs(owner, ev, "/u"+owner)
		}
	}
	e.start()

	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) VALUES (1, 7, 10)`) // u1 u2
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) VALUES (2, 8, 20)`) // u1 u3
	e.Exec(`UPDATE public.orders SET tenant_id = 8 WHERE id = 1`)                // u1 (with previous), u3 (without)
	e.Exec(`UPDATE public.orders SET status = 'paid' WHERE id = 2`)              // updated + paid: u1 u3
	e.Exec(`UPDATE public.orders SET total = 21 WHERE id = 2`)                   // updated only: u1 u3
	e.Exec(`DELETE FROM public.orders WHERE id = 2`)                             // u1 u3
	// Owner attributes are read when walhook judges a change, so let it
	// catch up before the permission change (README: Limits).
	e.Recv.Wait(t, "/u1", 7)
	e.Recv.Wait(t, "/u3", 6)
	e.Exec(`UPDATE app.users SET tenant_ids = '{7,8}' WHERE id = 2`)             // permission change
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) VALUES (3, 8, 30)`) // u1 u2 u3

	u1 := e.Recv.Wait(t, "/u1", 8)
	e.Recv.Wait(t, "/u3", 7)
	e.Recv.Wait(t, "/u2", 2)

	count := func(path string) map[string]int {
		m := map[string]int{}
		for _, d := range e.Recv.Deliveries(path) {
			env := d.Envelope(t)
			m[env["event"].(string)]++
		}
		return m
	}
	want := map[string]map[string]int{
		"/u1":  {"order.created": 3, "order.updated": 3, "order.paid": 1, "order.deleted": 1},
		"/u2":  {"order.created": 2},
		"/u3":  {"order.created": 2, "order.updated": 3, "order.paid": 1, "order.deleted": 1},
		"/u99": {},
	}
	for path, w := range want {
		got := count(path)
		if len(got) != len(w) {
			t.Fatalf("%s got %v, want %v", path, got, w)
		}
		for ev, n := range w {
			if got[ev] != n {
				t.Fatalf("%s got %v, want %v", path, got, w)
			}
		}
	}
	// The row that moved from tenant 7 to 8: the admin sees where it came
	// from, tenant 8's owner sees only where it is.
	prevFor := func(ds []e2e.Delivery) (seen bool, prev any) {
		for _, d := range ds {
			env := d.Envelope(t)
			data := env["data"].(map[string]any)
			if env["event"] == "order.updated" && data["id"] == float64(1) {
				return true, env["previous"]
			}
		}
		return false, nil
	}
	if seen, prev := prevFor(u1); !seen || prev.(map[string]any)["tenant_id"] != float64(7) {
		t.Fatalf("admin's order.updated for the moved row: previous = %v, want tenant_id 7", prev)
	}
	if seen, prev := prevFor(e.Recv.Deliveries("/u3")); !seen || prev != nil {
		t.Fatalf("tenant 8's order.updated for the moved row: seen %v, previous = %v; want no previous", seen, prev)
	}
}

func TestUnknownOwnerIsDeactivated(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.SubscribeAs("99", "customer.created", "/nobody")
	e.SubscribeAs("1", "customer.created", "/admin")
	e.start()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) SELECT g, 7, 'c' || g FROM generate_series(1, $1::int) g`, MaxOwnerMissing)
	e.Recv.Wait(t, "/admin", MaxOwnerMissing)
	var active bool
	var msg string
	e2e.WaitFor(t, 30*time.Second, "the unknown owner's subscription to be deactivated", func() bool {
		err := e.Conn.QueryRow(context.Background(), `SELECT active, coalesce(status_message, '') FROM walhook.subscriptions WHERE owner = '99'`).Scan(&active, &msg)
		return err == nil && !active
	})
	if !strings.Contains(msg, `owner "99" was not found`) {
		t.Fatalf("status_message = %q, want it to say the owner was not found", msg)
	}
	if n := len(e.Recv.Deliveries("/nobody")); n != 0 {
		t.Fatalf("unknown owner got %d deliveries, want 0", n)
	}
}

func TestDeletedOwnerLosesSubscriptions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "") // the demo config sets owners.remove_on_delete
	e.SubscribeAs("2", "customer.created", "/bob")
	e.SubscribeAs("2", "order.created", "/bob")
	e.SubscribeAs("1", "customer.created", "/admin")
	e.start()
	e.Exec(`DELETE FROM app.users WHERE id = 2`)
	e2e.WaitFor(t, 30*time.Second, "the deleted owner's subscriptions to go", func() bool {
		var n int
		err := e.Conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.subscriptions WHERE owner = '2'`).Scan(&n)
		return err == nil && n == 0
	})
	var n int
	if err := e.Conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.subscriptions WHERE owner = '1'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("other owner's subscriptions = %d, %v; want 1", n, err)
	}
}
