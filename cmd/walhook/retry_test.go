package main

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/deliver"
)

// retryConfig is the demo config with the given delivery.retry and
// delivery.history, so retries happen within a test's patience.
func retryConfig(t *testing.T, retry string, history int) string {
	t.Helper()
	cfg := string(demoConfig)
	for old, repl := range map[string]string{
		"retry: [0s, 5s, 5m, 30m, 2h, 5h, 10h, 10h]": "retry: " + retry,
		"history: 50": "history: " + strconv.Itoa(history),
	} {
		if !strings.Contains(cfg, old) {
			t.Fatalf("demo config has no %q to replace", old)
		}
		cfg = strings.Replace(cfg, old, repl, 1)
	}
	return cfg
}

// setStatus makes the receiver answer with fn's status from now on.
func (r *receiver) setStatus(fn func(*http.Request) int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status = fn
}

// goneAt makes the receiver answer 410 Gone at path and 200 elsewhere.
func (r *receiver) goneAt(path string) {
	r.setStatus(func(req *http.Request) int {
		if req.URL.Path == path {
			return http.StatusGone
		}
		return http.StatusOK
	})
}

// downUntil makes the receiver answer 503 until up is set, then 200.
func (r *receiver) downUntil(up *atomic.Bool) {
	r.setStatus(func(*http.Request) int {
		if up.Load() {
			return http.StatusOK
		}
		return http.StatusServiceUnavailable
	})
}

// attemptRow is one row of walhook.attempts.
type attemptRow struct {
	ID       int64
	EventID  string
	Attempt  int
	Status   string
	Response *int
	Error    *string
}

func (e *env) attempts(sub string) []attemptRow {
	e.t.Helper()
	rows, err := e.conn.Query(context.Background(), `SELECT id, event_id, attempt, status, response_status, error
		FROM walhook.attempts WHERE subscription_id = $1 ORDER BY id`, sub)
	if err != nil {
		e.t.Fatalf("read attempts: %v", err)
	}
	defer rows.Close()
	var out []attemptRow
	for rows.Next() {
		var a attemptRow
		if err := rows.Scan(&a.ID, &a.EventID, &a.Attempt, &a.Status, &a.Response, &a.Error); err != nil {
			e.t.Fatalf("read attempts: %v", err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		e.t.Fatalf("read attempts: %v", err)
	}
	return out
}

func (e *env) count(sql string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func (e *env) subscriptionState(sub string) (active bool, msg string) {
	e.t.Helper()
	var m *string
	if err := e.conn.QueryRow(context.Background(), `SELECT active, status_message FROM walhook.subscriptions WHERE id = $1`, sub).Scan(&active, &m); err != nil {
		e.t.Fatalf("read subscription: %v", err)
	}
	if m != nil {
		msg = *m
	}
	return active, msg
}

// failFirst answers 503 to the first n requests, then 200.
func failFirst(n int64) func(*http.Request) int {
	var seen atomic.Int64
	return func(*http.Request) int {
		if seen.Add(1) <= n {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	}
}

func TestRetryUntilSuccess(t *testing.T) {
	t.Parallel()
	e := newEnv(t, retryConfig(t, "[0s, 200ms, 200ms]", 3))
	sub := e.subscribe("customer.created", "/c")
	e.recv.setStatus(failFirst(2))
	e.start()

	e.exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'Ada')`)
	got := e.recv.wait(t, "/c", 3)
	id := got[0].Header.Get("webhook-id")
	for i, d := range got {
		if d.Header.Get("webhook-id") != id {
			t.Fatalf("delivery %d webhook-id = %q, want %q: a retry is the same event", i, d.Header.Get("webhook-id"), id)
		}
	}
	waitFor(t, 10*time.Second, "the queue to empty", func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries`) == 0 && len(e.attempts(sub)) == 3
	})
	a := e.attempts(sub)
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
	if n := e.count(`SELECT count(*) FROM walhook.subscription_failures`); n != 0 {
		t.Fatalf("subscription_failures rows = %d after a success, want 0", n)
	}
	if active, _ := e.subscriptionState(sub); !active {
		t.Fatalf("subscription deactivated after a success")
	}
	if got := len(e.recv.deliveries("/c")); got != 3 {
		t.Fatalf("receiver got %d requests, want 3", got)
	}
}

func TestGoneDeactivates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, retryConfig(t, "[0s, 200ms, 200ms]", 3))
	sub := e.subscribe("customer.created", "/gone")
	other := e.subscribe("customer.created", "/ok")
	e.recv.goneAt("/gone")
	e.start()

	e.exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'Ada')`)
	e.recv.wait(t, "/gone", 1)
	waitFor(t, 10*time.Second, "the subscription to be deactivated", func() bool {
		active, _ := e.subscriptionState(sub)
		return !active
	})
	if _, msg := e.subscriptionState(sub); msg != deliver.GoneMessage {
		t.Fatalf("status_message = %q, want %q", msg, deliver.GoneMessage)
	}
	a := e.attempts(sub)
	if len(a) != 1 || a[0].Status != "failed" || a[0].Response == nil || *a[0].Response != 410 {
		t.Fatalf("attempts = %+v, want one failed 410", a)
	}
	if n := e.count(`SELECT count(*) FROM walhook.deliveries WHERE subscription_id = $1`, sub); n != 0 {
		t.Fatalf("%d retries queued after 410, want none", n)
	}
	// The deactivation reaches the index through the stream: a later change
	// goes to the other subscription only.
	e.exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (2, 7, 'Bea')`)
	e.recv.wait(t, "/ok", 2)
	waitFor(t, 10*time.Second, "the second attempt to /ok recorded", func() bool { return len(e.attempts(other)) == 2 })
	if n := len(e.recv.deliveries("/gone")); n != 1 {
		t.Fatalf("/gone got %d requests, want 1", n)
	}
}

func TestPersistentFailuresSuspend(t *testing.T) {
	t.Parallel()
	e := newEnv(t, retryConfig(t, "[0s, 200ms, 200ms]", 3))
	sub := e.subscribe("customer.created", "/c")
	e.recv.setStatus(func(*http.Request) int { return http.StatusInternalServerError })
	e.start()

	e.exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'Ada')`)
	waitFor(t, 15*time.Second, "the subscription to be suspended", func() bool {
		active, _ := e.subscriptionState(sub)
		return !active
	})
	if _, msg := e.subscriptionState(sub); msg != deliver.SuspendedMessage {
		t.Fatalf("status_message = %q, want %q", msg, deliver.SuspendedMessage)
	}
	a := e.attempts(sub)
	if len(a) != 3 {
		t.Fatalf("attempts = %+v, want 3 failed", a)
	}
	for i, r := range a {
		if r.Status != "failed" || r.Attempt != i+1 || r.Response == nil || *r.Response != 500 {
			t.Fatalf("attempt row %d = %+v, want attempt %d failed 500", i, r, i+1)
		}
	}
	// The schedule has run out: nothing is left to retry.
	if n := e.count(`SELECT count(*) FROM walhook.deliveries`); n != 0 {
		t.Fatalf("%d deliveries still queued after the last scheduled attempt", n)
	}

	// activate() starts the count afresh.
	e.exec(`SELECT walhook.activate($1)`, sub)
	if n := e.count(`SELECT count(*) FROM walhook.subscription_failures WHERE subscription_id = $1`, sub); n != 0 {
		t.Fatalf("activate left the failure count")
	}
	e.recv.setStatus(nil)
	e.exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (2, 7, 'Bea')`)
	waitFor(t, 10*time.Second, "a success after activate", func() bool {
		a := e.attempts(sub)
		return len(a) > 0 && a[len(a)-1].Status == "succeeded"
	})
	if active, _ := e.subscriptionState(sub); !active {
		t.Fatalf("subscription inactive after activate and a success")
	}
}

func TestHistoryIsARingBuffer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, retryConfig(t, "[0s, 200ms, 200ms]", 3))
	sub := e.subscribe("customer.created", "/c")
	e.start()

	var maxSeen atomic.Int64
	for i := 1; i <= 12; i++ {
		e.exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES ($1, 7, 'n')`, i)
		if n := int64(len(e.attempts(sub))); n > maxSeen.Load() {
			maxSeen.Store(n)
		}
	}
	e.recv.wait(t, "/c", 12)
	last := e.currentLSN()
	// The slot passes a change only after its attempts are committed, so
	// once it passes the last insert every attempt has been written (and
	// the history pruned in the same transaction).
	waitFor(t, 10*time.Second, "every attempt recorded", func() bool {
		if n := int64(len(e.attempts(sub))); n > maxSeen.Load() {
			maxSeen.Store(n)
		}
		return e.confirmed() >= last
	})
	if n := len(e.attempts(sub)); n != 3 {
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
	e := newEnv(t, retryConfig(t, "[0s, 1s, 1s, 1s, 1s, 1s, 1s, 1s]", 50))
	sub := e.subscribe("customer.created", "/c")
	var up atomic.Bool
	e.recv.downUntil(&up)
	e.start()

	e.exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'Ada')`)
	insertedAt := e.currentLSN()
	waitFor(t, 10*time.Second, "a retry queued", func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE subscription_id = $1`, sub) == 1
	})
	// The slot moves past the change once its retry is queued: from here on
	// only the queue can deliver it.
	waitFor(t, 10*time.Second, "the slot to pass the insert", func() bool { return e.confirmed() >= insertedAt })
	e.stop()
	if n := e.count(`SELECT count(*) FROM walhook.deliveries WHERE subscription_id = $1`, sub); n != 1 {
		t.Fatalf("%d queued deliveries after stop, want 1", n)
	}
	id := e.recv.deliveries("/c")[0].Header.Get("webhook-id")

	up.Store(true)
	e.start()
	waitFor(t, 15*time.Second, "the retry to succeed after restart", func() bool {
		a := e.attempts(sub)
		return len(a) > 0 && a[len(a)-1].Status == "succeeded"
	})
	a := e.attempts(sub)
	last := a[len(a)-1]
	if last.Attempt < 2 || last.EventID != id {
		t.Fatalf("succeeded attempt = %+v, want a retry (attempt >= 2) of event %s", last, id)
	}
	for _, r := range a[:len(a)-1] {
		if r.Status != "failed" {
			t.Fatalf("attempts = %+v: only the last should have succeeded", a)
		}
	}
	if n := e.count(`SELECT count(*) FROM walhook.deliveries`); n != 0 {
		t.Fatalf("%d deliveries still queued after success", n)
	}
}

func TestRedeliver(t *testing.T) {
	t.Parallel()
	e := newEnv(t, retryConfig(t, "[0s, 200ms, 200ms]", 3))
	sub := e.subscribe("customer.created", "/c", "/", "zapier")
	e.start()

	e.exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'Ada')`)
	first := e.recv.wait(t, "/c", 1)[0]
	waitFor(t, 10*time.Second, "the attempt recorded", func() bool { return len(e.attempts(sub)) == 1 })
	attemptID := e.attempts(sub)[0].ID

	var deliveryID int64
	if err := e.conn.QueryRow(context.Background(), `SELECT walhook.redeliver($1)`, attemptID).Scan(&deliveryID); err != nil {
		t.Fatalf("redeliver(%d): %v", attemptID, err)
	}
	if deliveryID <= 0 {
		t.Fatalf("redeliver returned %d, want a delivery id", deliveryID)
	}
	again := e.recv.wait(t, "/c", 2)[1]
	if got, want := again.Header.Get("webhook-id"), first.Header.Get("webhook-id"); got != want || got == "" {
		t.Fatalf("redelivered webhook-id = %q, want %q", got, want)
	}
	if string(again.Body) != string(first.Body) || again.Method != first.Method {
		t.Fatalf("redelivered %s %s, want %s %s", again.Method, again.Body, first.Method, first.Body)
	}
	if got := again.Header.Get("X-Source"); got != "walhook" {
		t.Fatalf("redelivered X-Source = %q: the dialect's headers were not kept", got)
	}
	waitFor(t, 10*time.Second, "the redelivery recorded and dequeued", func() bool {
		return len(e.attempts(sub)) == 2 && e.count(`SELECT count(*) FROM walhook.deliveries`) == 0
	})

	_, err := e.conn.Exec(context.Background(), `SELECT walhook.redeliver(-1)`)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22023" {
		t.Fatalf("redeliver(-1) error = %v, want SQLSTATE 22023", err)
	}
}

func TestInactiveSubscriptionParksRetries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, retryConfig(t, "[0s, 200ms, 200ms, 200ms, 200ms, 200ms]", 50))
	sub := e.subscribe("customer.created", "/c", "/", "zapier")
	var up atomic.Bool
	e.recv.downUntil(&up)
	e.start()

	e.exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'Ada')`)
	waitFor(t, 10*time.Second, "a retry queued", func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE subscription_id = $1`, sub) == 1
	})
	e.exec(`SELECT walhook.deactivate($1)`, sub)
	// Parked rows are out of the due index, so polls do not keep scanning them.
	waitFor(t, 10*time.Second, "the retry parked", func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE subscription_id = $1 AND next_attempt_at = 'infinity'`, sub) == 1
	})
	sent := len(e.recv.deliveries("/c"))

	up.Store(true)
	e.exec(`SELECT walhook.activate($1)`, sub)
	waitFor(t, 10*time.Second, "the parked retry sent after activate", func() bool {
		a := e.attempts(sub)
		return len(a) > 0 && a[len(a)-1].Status == "succeeded" && e.count(`SELECT count(*) FROM walhook.deliveries`) == 0
	})
	if got := len(e.recv.deliveries("/c")); got != sent+1 {
		t.Fatalf("receiver got %d requests, want %d: one more after activate", got, sent+1)
	}
	// A queued retry keeps the dialect's headers.
	ds := e.recv.deliveries("/c")
	if got := ds[len(ds)-1].Header.Get("X-Source"); got != "walhook" {
		t.Fatalf("retried X-Source = %q, want walhook", got)
	}
}
