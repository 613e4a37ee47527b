package walhook

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/e2e"
)

// TestSiteHierarchy is the seed's example: subscriptions at /, /NOAA and
// /NOAA/NWS/OUN; a customer created in the OUN office reaches all three, one
// in OKC reaches two.
func TestSiteHierarchy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Subscribe("customer.created", "/root", "/")
	e.Subscribe("customer.created", "/noaa", "/NOAA")
	e.Subscribe("customer.created", "/oun", "/NOAA/NWS/OUN")
	e.Subscribe("customer.created", "/elsewhere", "/NASA")
	e.start()

	e.Exec(`INSERT INTO public.customers (id, tenant_id, tenant_path, name) VALUES (1, 7, '/NOAA/NWS/OUN', 'in OUN')`)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, tenant_path, name) VALUES (2, 7, '/NOAA/NWS/OKC', 'in OKC')`)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, tenant_path, name) VALUES (3, 7, NULL, 'no site')`)
	// The active site: a row at the root, written by a transaction acting
	// for OUN, also reaches OUN's subscribers.
	e.Exec(`BEGIN; SELECT walhook.set_site('/NOAA/NWS/OUN');
		INSERT INTO public.customers (id, tenant_id, tenant_path, name) VALUES (4, 7, NULL, 'bulk for OUN'); COMMIT`)
	// set_site rolls back with its transaction.
	e.Exec(`BEGIN; SELECT walhook.set_site('/NASA'); ROLLBACK`)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, tenant_path, name) VALUES (5, 7, '/', 'sentinel')`)

	// Each target's deliveries run on their own, so wait for each; row 5,
	// the last commit, reaching the root means every earlier row was
	// dispatched too.
	want := map[string][]float64{
		"/root": {1, 2, 3, 4, 5},
		"/noaa": {1, 2, 4},
		"/oun":  {1, 4},
	}
	for path, w := range want {
		if got := e.Recv.WaitRows(t, path, w...); !slices.Equal(got, w) {
			t.Fatalf("%s got ids %v, want %v", path, got, w)
		}
	}
	if got := e2e.SortedIDs(t, e.Recv.Deliveries("/elsewhere")); len(got) != 0 {
		t.Fatalf("/elsewhere got ids %v, want none", got)
	}
	for _, d := range e.Recv.Deliveries("/oun") {
		if env := d.Envelope(t); env["data"].(map[string]any)["id"] == float64(4) && env["site"] != "/" {
			t.Fatalf("active-site delivery reports site %v, want the row's own /", env["site"])
		}
	}
}

func TestCoalescesSubscriptionsToOneTarget(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Subscribe("customer.created", "/shared")
	e.Subscribe("customer.created", "/shared", "/acme")
	e.Subscribe("customer.created", "/shared", "/", "zapier") // another dialect: its own request
	e.Subscribe("customer.created", "/other")
	e.start()

	e.Exec(`INSERT INTO public.customers (id, tenant_id, tenant_path, name) VALUES (1, 7, '/acme', 'x')`)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, tenant_path, name) VALUES (2, 7, '/', 'sentinel')`)
	e.Recv.Wait(t, "/other", 2)
	e.Recv.Wait(t, "/shared", 4)
	if n := len(e.Recv.Deliveries("/shared")); n != 4 {
		t.Fatalf("/shared got %d requests, want 4 (one envelope and one row body per change)", n)
	}
	var attempts int
	e2e.WaitFor(t, 10*time.Second, "attempts recorded", func() bool {
		_ = e.Conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.attempts`).Scan(&attempts)
		return attempts == 6
	})
}
