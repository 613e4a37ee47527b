package walhook

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/e2e"
)

// TestOwnerAttributesAsOfEachCommit (the burst race): grants and revokes
// of an owner's tenant interleaved with rows, committed faster than walhook
// judges them. Each row must reach the owner exactly when the owner was
// allowed at that row's commit — not as the owner stands when walhook gets
// to it.
func TestOwnerAttributesAsOfEachCommit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.SubscribeAs("2", "order.created", "/bob") // Bob sees tenant 7
	ctx := context.Background()
	var want []float64
	const rows = 60
	// Written before walhook starts, so that all of it is a backlog judged
	// after the last revoke committed.
	for i := 1; i <= rows; i++ {
		allowed := i%3 != 0
		tenants := "'{}'"
		if allowed {
			tenants = "'{7}'"
		}
		e.Exec(`BEGIN`)
		e.Exec(`UPDATE app.users SET tenant_ids = ` + tenants + ` WHERE id = 2`)
		e.Exec(`INSERT INTO public.orders (id, tenant_id, total) VALUES ($1, 7, 1)`, i)
		e.Exec(`COMMIT`)
		if allowed {
			want = append(want, float64(i))
		}
	}
	e.Exec(`UPDATE app.users SET tenant_ids = '{}' WHERE id = 2`) // revoked now
	e.start()
	got := e.Recv.WaitRows(t, "/bob", want...)
	// Rows written while revoked must never arrive; wait for the slot to
	// pass everything before looking.
	target := e.CurrentLSN()
	e2e.WaitFor(t, 30*time.Second, "the slot to pass the backlog", func() bool { return e.Confirmed() >= target })
	got = e.Recv.WaitRows(t, "/bob", want...)
	if !slices.Equal(got, want) {
		t.Fatalf("Bob got rows %v, want exactly %v (those committed while he held tenant 7)", got, want)
	}
	if n := e.Count(`SELECT count(*) FROM walhook.held WHERE status = 'held'`); n != 0 {
		t.Fatalf("%d deliveries held, want none", n)
	}
	_ = ctx
}

// TestOwnerAttributesAcrossDowntime (the downtime race): a row inserted
// while its owner lacked the tenant is not delivered though the owner was
// granted the tenant before walhook came back; a row inserted after the
// grant is.
func TestOwnerAttributesAcrossDowntime(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "", `UPDATE app.users SET tenant_ids = '{}' WHERE id = 2`)
	e.SubscribeAs("2", "order.created", "/bob")
	svc := e.start()
	e2e.WaitFor(t, 30*time.Second, "the service to stream", func() bool { return svc.Health().Ready })
	e.stop()
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) VALUES (1, 7, 1)`) // Bob may not see it
	e.Exec(`UPDATE app.users SET tenant_ids = '{7}' WHERE id = 2`)
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) VALUES (2, 7, 1)`) // Bob may
	e.start()
	e.Recv.WaitRows(t, "/bob", 2)
	target := e.CurrentLSN()
	e2e.WaitFor(t, 30*time.Second, "the slot to pass the backlog", func() bool { return e.Confirmed() >= target })
	if got := e2e.SortedIDs(t, e.Recv.Deliveries("/bob")); fmt.Sprint(got) != "[2]" {
		t.Fatalf("Bob got rows %v, want only [2]: row 1 was committed before he was granted tenant 7", got)
	}
}
