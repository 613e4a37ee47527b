package walhook

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/e2e"
)

// TestSubscriptionsOutOfThePublication: walhook.subscriptions dropped from
// the publication hides subscription changes from the stream. The leader
// notices, puts it back, and rebuilds the index from the table: the
// unsubscribed URL stops receiving, the new subscription receives.
func TestSubscriptionsOutOfThePublication(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	old := e.Subscribe("customer.created", "/old")
	svc := e.start()
	e2e.WaitFor(t, 30*time.Second, "the service to stream", func() bool { return svc.Health().Ready })
	// In one transaction, so that no check of the publication comes between.
	e.Exec(`BEGIN`)
	e.Exec(`ALTER PUBLICATION walhook DROP TABLE walhook.subscriptions`)
	e.Exec(`SELECT walhook.unsubscribe($1)`, old)
	e.Subscribe("customer.created", "/new")
	e.Exec(`COMMIT`)
	e2e.WaitFor(t, 30*time.Second, "the publication to cover walhook.subscriptions again", func() bool {
		return e.Count(`SELECT count(*) FROM pg_publication_tables WHERE pubname = 'walhook' AND tablename = 'subscriptions'`) == 1
	})
	e2e.WaitFor(t, 30*time.Second, "the pipeline to restart with the index rebuilt", func() bool {
		h := svc.Health()
		return h.Ready && h.Restarts >= 1 && strings.Contains(h.LastError, "rebuilt from the table")
	})
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'after the gap')`)
	e.Recv.WaitRows(t, "/new", 1)
	if got := e.Recv.Deliveries("/old"); len(got) != 0 {
		t.Fatalf("the unsubscribed URL got %d deliveries: %s", len(got), got[0].Body)
	}
}

// TestPublicationOperationsHealed: a publication narrowed to inserts stops
// updates silently; the leader puts updates and deletes back.
func TestPublicationOperationsHealed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Subscribe("customer.updated", "/u")
	e.start()
	e.Exec(`ALTER PUBLICATION walhook SET (publish = 'insert')`)
	e2e.WaitFor(t, 30*time.Second, "the publication to publish updates again", func() bool {
		return e.Count(`SELECT count(*) FROM pg_publication WHERE pubname = 'walhook' AND pubupdate AND pubdelete`) == 1
	})
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'x')`)
	e.Exec(`UPDATE public.customers SET name = 'y' WHERE id = 1`)
	e.Recv.WaitRows(t, "/u", 1)
}

// TestDroppedPublicationStopsLoudly: a dropped publication makes the slot
// unusable; Run stops with an error saying so and what to do.
func TestDroppedPublicationStopsLoudly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	svc := e.newService()
	done := make(chan error, 1)
	go func() { done <- svc.Run(context.Background()) }() //nolint:conc // the test reads Run's error
	e2e.WaitFor(t, 30*time.Second, "the service to stream", func() bool { return svc.Health().Ready })
	e.Exec(`DROP PUBLICATION walhook`)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'x')`)
	select {
	case err := <-done:
		var dropped *PublicationDroppedError
		if !errors.As(err, &dropped) || !strings.Contains(err.Error(), "walhook install") {
			t.Fatalf("Run() = %v, want a PublicationDroppedError saying what to do", err)
		}
	case <-time.After(60 * time.Second):
		_ = svc.StopAndCancel(context.Background())
		t.Fatal("Run did not stop after the publication was dropped")
	}
}

// TestRenamedTableIsFollowed: a mapped table renamed while walhook runs
// keeps producing its events (walhook follows it by its relation id and
// warns that the config uses the old name), instead of going silent.
func TestRenamedTableIsFollowed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.SubscribeAs("1", "order.created", "/o")
	svc := e.start()
	e2e.WaitFor(t, 30*time.Second, "the service to stream", func() bool { return svc.Health().Ready })
	e.Exec(`ALTER TABLE public.orders RENAME TO orders_renamed`)
	e.Exec(`INSERT INTO public.orders_renamed (id, tenant_id, total) VALUES (1, 7, 10)`)
	e.Recv.WaitRows(t, "/o", 1)
}
