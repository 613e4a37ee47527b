package walhook

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/internal/e2e"
)

// TestPing: walhook.ping(id) sends a walhook.ping envelope naming the
// subscription, signed with its secret, and records it as an attempt; it
// refuses inactive and unknown subscriptions, and other owners'.
func TestPing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := context.Background()
	const secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	sub := e.Subscribe("customer.created", "/ping", "/acme", "default", secret)
	e.start()
	var delivery int64
	if err := e.Conn.QueryRow(ctx, `SELECT walhook.ping($1)`, sub).Scan(&delivery); err != nil || delivery == 0 {
		t.Fatalf("ping = %d, %v", delivery, err)
	}
	got := e.Recv.Wait(t, "/ping", 1)[0]
	env := got.Envelope(t)
	data, _ := env["data"].(map[string]any)
	if env["event"] != "walhook.ping" || env["site"] != "/acme" || data["subscription_id"] != sub || env["id"] == "" {
		t.Fatalf("ping body = %s, want a walhook.ping envelope with the subscription id", got.Body)
	}
	if _, err := time.Parse(time.RFC3339Nano, env["occurred_at"].(string)); err != nil {
		t.Fatalf("occurred_at %v: %v", env["occurred_at"], err)
	}
	if got.Header.Get("webhook-id") != env["id"] || got.Header.Get("webhook-subscription") != sub ||
		got.Header.Get("Content-Type") != "application/json" || !strings.HasPrefix(got.Header.Get("User-Agent"), "walhook/") {
		t.Fatalf("ping headers = %v", got.Header)
	}
	key, _ := deliver.SecretKey(secret)
	ts, _ := strconv.ParseInt(got.Header.Get("webhook-timestamp"), 10, 64)
	if want := deliver.Sign(key, got.Header.Get("webhook-id"), ts, got.Body); got.Header.Get("webhook-signature") != want {
		t.Fatalf("ping signature %q, want %q", got.Header.Get("webhook-signature"), want)
	}
	e2e.WaitFor(t, 10*time.Second, "the ping recorded as an attempt", func() bool {
		return e.Count(`SELECT count(*) FROM walhook.attempts WHERE subscription_id = $1 AND event = 'walhook.ping' AND status = 'succeeded'`, sub) == 1
	})
	if n := e.Count(`SELECT count(*) FROM walhook.deliveries`); n != 0 {
		t.Fatalf("%d deliveries left queued after the ping succeeded, want 0", n)
	}

	e.Exec(`SELECT walhook.deactivate($1)`, sub)
	for _, c := range []struct{ what, sql, want string }{
		{"inactive", `SELECT walhook.ping('` + sub + `')`, "is inactive"},
		{"unknown", `SELECT walhook.ping(gen_random_uuid())`, "no subscription"},
	} {
		_, err := e.Conn.Exec(ctx, c.sql)
		if code, msg := sqlState(err); code != "22023" || !strings.Contains(msg, c.want) {
			t.Fatalf("ping(%s) = %v, want 22023 %q", c.what, err, c.want)
		}
	}
	app := e.loginRole("app_", "walhook_app")
	if _, err := app.Exec(ctx, `SET walhook.owner = '2'`); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{`SELECT walhook.ping($1)`, `SELECT walhook.redeliver_failed($1, '-infinity')`} {
		_, err := app.Exec(ctx, sql, sub)
		if code, _ := sqlState(err); code != "42501" {
			t.Fatalf("%s for another owner = %v, want 42501", sql, err)
		}
	}
}

// TestRedeliverFailed: redeliver_failed(id, since) queues again each event
// whose newest attempt since then failed, once, with its event id, and
// answers how many.
func TestRedeliverFailed(t *testing.T) {
	t.Parallel()
	// One attempt per delivery: a failure is final at once.
	e := newEnv(t, e2e.RetryConfig(t, "[0s]", 10))
	ctx := context.Background()
	sub := e.Subscribe("customer.created", "/r")
	other := e.Subscribe("customer.created", "/other")
	var up atomic.Bool
	e.Recv.SetStatus(func(r *http.Request) int {
		if r.URL.Path == "/r" && !up.Load() {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	e.start()
	var before time.Time
	if err := e.Conn.QueryRow(ctx, `SELECT now()`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'a'), (2, 7, 'b'), (3, 7, 'c')`)
	e2e.WaitFor(t, 10*time.Second, "three failed attempts", func() bool {
		return e.Count(`SELECT count(*) FROM walhook.attempts WHERE subscription_id = $1 AND status = 'failed'`, sub) == 3
	})
	first := e.Recv.Deliveries("/r")
	redeliver := func(since any) int {
		t.Helper()
		var n int
		if err := e.Conn.QueryRow(ctx, `SELECT walhook.redeliver_failed($1, $2)`, sub, since).Scan(&n); err != nil {
			t.Fatalf("redeliver_failed: %v", err)
		}
		return n
	}
	if n := redeliver("infinity"); n != 0 {
		t.Fatalf("redeliver_failed(since the future) = %d, want 0", n)
	}
	up.Store(true)
	if n := redeliver(before); n != 3 {
		t.Fatalf("redeliver_failed = %d, want 3", n)
	}
	if n := redeliver(before); n != 0 {
		t.Fatalf("redeliver_failed again while queued = %d, want 0", n)
	}
	got := e.Recv.Wait(t, "/r", 6)
	ids := map[string]bool{}
	for _, d := range first {
		ids[d.Header.Get("webhook-id")] = true
	}
	for _, d := range got[3:] {
		if !ids[d.Header.Get("webhook-id")] || d.Header.Get("webhook-subscription") != sub {
			t.Fatalf("redelivery with webhook-id %q, subscription %q: want an original event id and %s",
				d.Header.Get("webhook-id"), d.Header.Get("webhook-subscription"), sub)
		}
	}
	e2e.WaitFor(t, 10*time.Second, "the redeliveries recorded", func() bool {
		return e.Count(`SELECT count(*) FROM walhook.attempts WHERE subscription_id = $1 AND status = 'succeeded'`, sub) == 3
	})
	if n := redeliver(before); n != 0 {
		t.Fatalf("redeliver_failed after they succeeded = %d, want 0", n)
	}
	if n := e.Count(`SELECT count(*) FROM walhook.attempts WHERE subscription_id = $1`, other); n != 3 {
		t.Fatalf("the other subscription has %d attempts, want its 3 first ones only", n)
	}
}
