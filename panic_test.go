package walhook

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/internal/e2e"
)

// waitUnready waits for /readyz to answer 503 with the panic as the last
// error, and returns that body.
func waitUnready(t *testing.T, base, want string) string {
	t.Helper()
	var body string
	e2e.WaitFor(t, 10*time.Second, "/readyz to answer 503 with the panic", func() bool {
		var code int
		code, body = e2e.Get(base + "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, want)
	})
	return body
}

// TestRouterPanicRestartsPipeline: a panic while routing a change stops the
// pipeline at once (readiness 503, the error recorded), the service starts
// it again, and the change that panicked is delivered after the restart:
// it was never acknowledged.
func TestRouterPanicRestartsPipeline(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Subscribe("customer.created", "/c")
	// A restart backoff long enough to see readiness down in between.
	svc := e.newService(func(c *Config) { c.MinRestartBackoff, c.MaxRestartBackoff = 2*time.Second, 2*time.Second })
	var panics atomic.Int32
	svc.hooks.route = func() {
		if panics.Add(1) == 1 {
			panic("injected router panic")
		}
	}
	base := serveHTTP(t, svc.Handler())
	e.run(svc)
	e2e.WaitFor(t, 30*time.Second, "the service to stream", func() bool { return svc.Health().Ready })

	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'panicked once')`)
	waitUnready(t, base, "injected router panic")
	if got := e.Recv.Deliveries("/c"); len(got) != 0 {
		t.Fatalf("%d deliveries before the restart, want none", len(got))
	}
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (2, 7, 'after the panic')`)
	e.Recv.WaitRows(t, "/c", 1, 2)
	e2e.WaitFor(t, 30*time.Second, "the service to stream again", func() bool { return svc.Health().Ready })
	h := svc.Health()
	if h.Restarts < 1 || !strings.Contains(h.LastError, "stage consumer panicked: injected router panic") {
		t.Fatalf("Health() = %+v, want a restart after the consumer's panic", h)
	}
}

// panickyTransport panics on its first request, then sends for real.
type panickyTransport struct{ calls atomic.Int32 }

func (p *panickyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if p.calls.Add(1) == 1 {
		panic("injected delivery panic")
	}
	return http.DefaultTransport.RoundTrip(r)
}

// TestDeliveryPanicRestartsPipeline: a panic in a delivery goroutine (one
// destination's runner) fails the worker, which stops the pipeline; the
// delivery that panicked was never recorded, so its change is delivered
// after the restart.
func TestDeliveryPanicRestartsPipeline(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Subscribe("customer.created", "/c")
	svc := e.newService(func(c *Config) { c.MinRestartBackoff, c.MaxRestartBackoff = 2*time.Second, 2*time.Second })
	rt := &panickyTransport{}
	svc.hooks.worker = func(c *deliver.Config) { c.Client = &http.Client{Transport: rt} }
	base := serveHTTP(t, svc.Handler())
	e.run(svc)

	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'its delivery panicked')`)
	waitUnready(t, base, "injected delivery panic")
	e.Recv.WaitRows(t, "/c", 1)
	if n := rt.calls.Load(); n < 2 {
		t.Fatalf("transport called %d times, want the panicked attempt and its replay", n)
	}
	e2e.WaitFor(t, 10*time.Second, "the replayed attempt to be recorded", func() bool {
		return e.Count(`SELECT count(*) FROM walhook.attempts WHERE status = 'succeeded'`) == 1
	})
}
