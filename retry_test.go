package walhook

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/internal/e2e"
)

func TestRetryUntilSuccess(t *testing.T) {
	t.Parallel()
	e := newEnv(t, e2e.RetryConfig(t, "[0s, 200ms, 200ms]", 3))
	sub := e.Subscribe("customer.created", "/c")
	e.Recv.SetStatus(e2e.FailFirst(2))
	e.start()

	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'Ada')`)
	got := e.Recv.Wait(t, "/c", 3)
	id := got[0].Header.Get("webhook-id")
	for i, d := range got {
		if d.Header.Get("webhook-id") != id {
			t.Fatalf("delivery %d webhook-id = %q, want %q: a retry is the same event", i, d.Header.Get("webhook-id"), id)
		}
	}
	e2e.WaitFor(t, 10*time.Second, "the queue to empty", func() bool {
		return e.Count(`SELECT count(*) FROM walhook.deliveries`) == 0 && len(e.Attempts(sub)) == 3
	})
	a := e.Attempts(sub)
	want := []struct {
		attempt int
		status  string
		resp    int
	}{{1, "failed", 503}, {2, "failed", 503}, {3, "succeeded", 200}}
	for i, w := range want {
		if a[i].Attempt != w.attempt || a[i].Status != w.status || a[i].Response == nil || *a[i].Response != w.resp || a[i].EventID != id {
			t.Fatalf("attempt row %d = %+v, want attempt %d %s %d for event %s", i, a[i], w.attempt, w.status, w.resp, id)
		}
	}
	if n := e.Count(`SELECT count(*) FROM walhook.subscription_failures`); n != 0 {
		t.Fatalf("subscription_failures rows = %d after a success, want 0", n)
	}
	if active, _ := e.SubscriptionState(sub); !active {
		t.Fatalf("subscription deactivated after a success")
	}
	if got := len(e.Recv.Deliveries("/c")); got != 3 {
		t.Fatalf("receiver got %d requests, want 3", got)
	}
}

func TestGoneDeactivates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, e2e.RetryConfig(t, "[0s, 200ms, 200ms]", 3))
	sub := e.Subscribe("customer.created", "/gone")
	other := e.Subscribe("customer.created", "/ok")
	e.Recv.SetStatus(func(r *http.Request) int {
		if r.URL.Path == "/gone" {
			return http.StatusGone
		}
		return http.StatusOK
	})
	e.start()

	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'Ada')`)
	e.Recv.Wait(t, "/gone", 1)
	e2e.WaitFor(t, 10*time.Second, "the subscription to be deactivated", func() bool {
		active, _ := e.SubscriptionState(sub)
		return !active
	})
	if _, msg := e.SubscriptionState(sub); msg != deliver.GoneMessage {
		t.Fatalf("status_message = %q, want %q", msg, deliver.GoneMessage)
	}
	a := e.Attempts(sub)
	if len(a) != 1 || a[0].Status != "failed" || a[0].Response == nil || *a[0].Response != 410 {
		t.Fatalf("attempts = %+v, want one failed 410", a)
	}
	if n := e.Count(`SELECT count(*) FROM walhook.deliveries WHERE subscription_id = $1`, sub); n != 0 {
		t.Fatalf("%d retries queued after 410, want none", n)
	}
	// The deactivation reaches the index through the stream: a later change
	// goes to the other subscription only.
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (2, 7, 'Bea')`)
	e.Recv.Wait(t, "/ok", 2)
	e2e.WaitFor(t, 10*time.Second, "the second attempt to /ok recorded", func() bool { return len(e.Attempts(other)) == 2 })
	if n := len(e.Recv.Deliveries("/gone")); n != 1 {
		t.Fatalf("/gone got %d requests, want 1", n)
	}
}

func TestPersistentFailuresSuspend(t *testing.T) {
	t.Parallel()
	e := newEnv(t, e2e.RetryConfig(t, "[0s, 200ms, 200ms]", 3))
	sub := e.Subscribe("customer.created", "/c")
	e.Recv.SetStatus(func(*http.Request) int { return http.StatusInternalServerError })
	e.start()

	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'Ada')`)
	e2e.WaitFor(t, 15*time.Second, "the subscription to be suspended", func() bool {
		active, _ := e.SubscriptionState(sub)
		return !active
	})
	if _, msg := e.SubscriptionState(sub); msg != deliver.SuspendedMessage {
		t.Fatalf("status_message = %q, want %q", msg, deliver.SuspendedMessage)
	}
	a := e.Attempts(sub)
	if len(a) != 3 {
		t.Fatalf("attempts = %+v, want 3 failed", a)
	}
	for i, r := range a {
		if r.Status != "failed" || r.Attempt != i+1 || r.Response == nil || *r.Response != 500 {
			t.Fatalf("attempt row %d = %+v, want attempt %d failed 500", i, r, i+1)
		}
	}
	// The schedule has run out: nothing is left to retry.
	if n := e.Count(`SELECT count(*) FROM walhook.deliveries`); n != 0 {
		t.Fatalf("%d deliveries still queued after the last scheduled attempt", n)
	}

	// activate() starts the count afresh.
	e.Exec(`SELECT walhook.activate($1)`, sub)
	if n := e.Count(`SELECT count(*) FROM walhook.subscription_failures WHERE subscription_id = $1`, sub); n != 0 {
		t.Fatalf("activate left the failure count")
	}
	e.Recv.SetStatus(nil)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (2, 7, 'Bea')`)
	e2e.WaitFor(t, 10*time.Second, "a success after activate", func() bool {
		a := e.Attempts(sub)
		return len(a) > 0 && a[len(a)-1].Status == "succeeded"
	})
	if active, _ := e.SubscriptionState(sub); !active {
		t.Fatalf("subscription inactive after activate and a success")
	}
}

func TestHistoryIsARingBuffer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, e2e.RetryConfig(t, "[0s, 200ms, 200ms]", 3))
	sub := e.Subscribe("customer.created", "/c")
	e.start()

	var maxSeen atomic.Int64
	for i := 1; i <= 12; i++ {
		e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES ($1, 7, 'n')`, i)
		if n := int64(len(e.Attempts(sub))); n > maxSeen.Load() {
			maxSeen.Store(n)
		}
	}
	e.Recv.Wait(t, "/c", 12)
	last := e.CurrentLSN()
	// The slot passes a change only after its attempts are committed, so
	// once it passes the last insert every attempt has been written (and
	// the history pruned in the same transaction).
	e2e.WaitFor(t, 10*time.Second, "every attempt recorded", func() bool {
		if n := int64(len(e.Attempts(sub))); n > maxSeen.Load() {
			maxSeen.Store(n)
		}
		return e.Confirmed() >= last
	})
	if n := len(e.Attempts(sub)); n != 3 {
		t.Fatalf("%d attempts kept, want history = 3", n)
	}
	if m := maxSeen.Load(); m > 3 {
		t.Fatalf("saw %d attempts of one subscription, want at most history = 3", m)
	}
}

func TestPendingRetrySurvivesRestart(t *testing.T) {
	t.Parallel()
	// Long enough delays that the retry is still pending when the service
	// stops, short enough that the test does not wait long after restart.
	e := newEnv(t, e2e.RetryConfig(t, "[0s, 1s, 1s, 1s, 1s, 1s, 1s, 1s]", 50))
	sub := e.Subscribe("customer.created", "/c")
	var up atomic.Bool
	e.Recv.DownUntil(&up)
	e.start()

	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'Ada')`)
	insertedAt := e.CurrentLSN()
	e2e.WaitFor(t, 10*time.Second, "a retry queued", func() bool {
		return e.Count(`SELECT count(*) FROM walhook.deliveries WHERE subscription_id = $1`, sub) == 1
	})
	// The slot moves past the change once its retry is queued: from here on
	// only the queue can deliver it.
	e2e.WaitFor(t, 10*time.Second, "the slot to pass the insert", func() bool { return e.Confirmed() >= insertedAt })
	e.stop()
	if n := e.Count(`SELECT count(*) FROM walhook.deliveries WHERE subscription_id = $1`, sub); n != 1 {
		t.Fatalf("%d queued deliveries after stop, want 1", n)
	}
	id := e.Recv.Deliveries("/c")[0].Header.Get("webhook-id")

	up.Store(true)
	e.start()
	e2e.WaitFor(t, 15*time.Second, "the retry to succeed after restart", func() bool {
		a := e.Attempts(sub)
		return len(a) > 0 && a[len(a)-1].Status == "succeeded"
	})
	a := e.Attempts(sub)
	last := a[len(a)-1]
	if last.Attempt < 2 || last.EventID != id {
		t.Fatalf("succeeded attempt = %+v, want a retry (attempt >= 2) of event %s", last, id)
	}
	for _, r := range a[:len(a)-1] {
		if r.Status != "failed" {
			t.Fatalf("attempts = %+v: only the last should have succeeded", a)
		}
	}
	if n := e.Count(`SELECT count(*) FROM walhook.deliveries`); n != 0 {
		t.Fatalf("%d deliveries still queued after success", n)
	}
}

func TestRedeliver(t *testing.T) {
	t.Parallel()
	e := newEnv(t, e2e.RetryConfig(t, "[0s, 200ms, 200ms]", 3))
	sub := e.Subscribe("customer.created", "/c", "/", "zapier")
	e.start()

	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'Ada')`)
	first := e.Recv.Wait(t, "/c", 1)[0]
	e2e.WaitFor(t, 10*time.Second, "the attempt recorded", func() bool { return len(e.Attempts(sub)) == 1 })
	attemptID := e.Attempts(sub)[0].ID

	var deliveryID int64
	if err := e.Conn.QueryRow(context.Background(), `SELECT walhook.redeliver($1)`, attemptID).Scan(&deliveryID); err != nil {
		t.Fatalf("redeliver(%d): %v", attemptID, err)
	}
	if deliveryID <= 0 {
		t.Fatalf("redeliver returned %d, want a delivery id", deliveryID)
	}
	again := e.Recv.Wait(t, "/c", 2)[1]
	if got, want := again.Header.Get("webhook-id"), first.Header.Get("webhook-id"); got != want || got == "" {
		t.Fatalf("redelivered webhook-id = %q, want %q", got, want)
	}
	if string(again.Body) != string(first.Body) || again.Method != first.Method {
		t.Fatalf("redelivered %s %s, want %s %s", again.Method, again.Body, first.Method, first.Body)
	}
	if got := again.Header.Get("X-Source"); got != "walhook" {
		t.Fatalf("redelivered X-Source = %q: the dialect's headers were not kept", got)
	}
	e2e.WaitFor(t, 10*time.Second, "the redelivery recorded and dequeued", func() bool {
		return len(e.Attempts(sub)) == 2 && e.Count(`SELECT count(*) FROM walhook.deliveries`) == 0
	})

	_, err := e.Conn.Exec(context.Background(), `SELECT walhook.redeliver(-1)`)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22023" {
		t.Fatalf("redeliver(-1) error = %v, want SQLSTATE 22023", err)
	}
}

func TestInactiveSubscriptionParksRetries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, e2e.RetryConfig(t, "[0s, 200ms, 200ms, 200ms, 200ms, 200ms]", 50))
	sub := e.Subscribe("customer.created", "/c", "/", "zapier")
	var up atomic.Bool
	e.Recv.DownUntil(&up)
	e.start()

	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'Ada')`)
	e2e.WaitFor(t, 10*time.Second, "a retry queued", func() bool {
		return e.Count(`SELECT count(*) FROM walhook.deliveries WHERE subscription_id = $1`, sub) == 1
	})
	e.Exec(`SELECT walhook.deactivate($1)`, sub)
	// Parked rows are out of the due index, so polls do not keep scanning them.
	e2e.WaitFor(t, 10*time.Second, "the retry parked", func() bool {
		return e.Count(`SELECT count(*) FROM walhook.deliveries WHERE subscription_id = $1 AND next_attempt_at = 'infinity'`, sub) == 1
	})
	sent := len(e.Recv.Deliveries("/c"))

	up.Store(true)
	e.Exec(`SELECT walhook.activate($1)`, sub)
	e2e.WaitFor(t, 10*time.Second, "the parked retry sent after activate", func() bool {
		a := e.Attempts(sub)
		return len(a) > 0 && a[len(a)-1].Status == "succeeded" && e.Count(`SELECT count(*) FROM walhook.deliveries`) == 0
	})
	if got := len(e.Recv.Deliveries("/c")); got != sent+1 {
		t.Fatalf("receiver got %d requests, want %d: one more after activate", got, sent+1)
	}
	// A queued retry keeps the dialect's headers.
	ds := e.Recv.Deliveries("/c")
	if got := ds[len(ds)-1].Header.Get("X-Source"); got != "walhook" {
		t.Fatalf("retried X-Source = %q, want walhook", got)
	}
}
