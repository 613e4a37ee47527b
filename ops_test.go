package walhook

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook/internal/demo"
	"github.com/walhook/walhook/internal/e2e"
	"github.com/walhook/walhook/internal/metrics"
)

func TestMetricsEndpoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Subscribe("customer.created", "/c")
	// Owner 2 sees tenant 7 only: a tenant 8 row is denied to it.
	e.Exec(`SELECT walhook.subscribe('customer.created', $1, '2')`, e.Recv.URL+"/bob")
	svc := e.newService(func(c *Config) { c.SampleInterval = 50 * time.Millisecond })
	base := serveHTTP(t, svc.Handler())

	if code, body := e2e.Get(base + "/readyz"); code != http.StatusServiceUnavailable || strings.TrimSpace(body) != "starting" {
		t.Fatalf("/readyz before start = %d %q, want 503 starting", code, body)
	}
	if code, body := e2e.Get(base + "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d %q, want 200", code, body)
	}
	e.run(svc)
	e2e.WaitFor(t, 30*time.Second, "/readyz to say leader streaming", func() bool {
		code, body := e2e.Get(base + "/readyz")
		return code == http.StatusOK && strings.TrimSpace(body) == "leader streaming"
	})

	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'seen by both')`)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (2, 8, 'hidden from owner 2')`)
	e.Recv.Wait(t, "/c", 2)
	e.Recv.Wait(t, "/bob", 1)

	var got map[string]float64
	e2e.WaitFor(t, 30*time.Second, "the metrics to count the deliveries", func() bool {
		got = e2e.Scrape(t, base+"/metrics")
		return got[`walhook_deliveries_total{outcome="succeeded"}`] >= 3 &&
			got["walhook_slot_retained_wal_bytes"] > 0
	})
	for _, c := range []struct {
		series string
		min    float64
	}{
		{"walhook_changes_decoded_total", 2},
		{"walhook_events_produced_total", 2},
		{"walhook_delivery_latency_seconds_count", 3},
		{"walhook_acl_denials_total", 1},
		{"walhook_leader", 1},
		{"walhook_streaming", 1},
		{`walhook_build_info{version="` + Version + `"}`, 1},
	} {
		if got[c.series] < c.min {
			t.Errorf("%s = %v, want >= %v", c.series, got[c.series], c.min)
		}
	}
	for _, name := range []string{
		"walhook_replication_lag_bytes", "walhook_replication_lag_seconds", "walhook_transactions_pending",
		`walhook_deliveries_total{outcome="retried"}`, `walhook_deliveries_total{outcome="failed"}`,
		`walhook_deliveries_total{outcome="deactivated"}`, `walhook_rule_errors_total{kind="acl"}`,
		`walhook_rule_errors_total{kind="event"}`, "go_goroutines",
	} {
		if _, ok := got[name]; !ok {
			t.Errorf("/metrics has no %s", name)
		}
	}

	// A second process on the same slot stands by, and says so.
	standby, err := New(e.testConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg conc.WaitGroup
	t.Cleanup(func() {
		_ = standby.Stop(context.Background())
		wg.Wait()
	})
	wg.Go(func() { _ = standby.Run(context.Background()) })
	h := standby.Handler()
	e2e.WaitFor(t, 30*time.Second, "the second process to stand by", func() bool {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		return rec.Code == http.StatusOK && strings.TrimSpace(rec.Body.String()) == "standby"
	})
}

func TestReadyStates(t *testing.T) {
	tests := []struct {
		name      string
		role      string
		streaming bool
		wantOK    bool
		want      string
	}{
		{name: "starting", role: RoleStarting, want: "starting"},
		{name: "standby", role: RoleStandby, wantOK: true, want: "standby"},
		{name: "leader streaming", role: RoleLeader, streaming: true, wantOK: true, want: "leader streaming"},
		{name: "leader with the pipeline down", role: RoleLeader, want: "leader, pipeline down"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc := &Service{state: newState(), metrics: metrics.New(Version)}
			svc.state.role.Store(tc.role)
			svc.state.streaming.Store(tc.streaming)
			rec := httptest.NewRecorder()
			svc.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
			wantCode := http.StatusServiceUnavailable
			if tc.wantOK {
				wantCode = http.StatusOK
			}
			if rec.Code != wantCode || strings.TrimSpace(rec.Body.String()) != tc.want {
				t.Fatalf("/readyz = %d %q, want %d %q", rec.Code, rec.Body.String(), wantCode, tc.want)
			}
		})
	}
}

// TestLatencyCountsRetries: a delivery that succeeds only on its retry from
// the queue is timed from its commit too.
func TestLatencyCountsRetries(t *testing.T) {
	t.Parallel()
	cfg := strings.Replace(string(demo.Config), "retry: [0s, 5s, 5m, 30m, 2h, 5h, 10h, 10h]", "retry: [0s, 200ms]", 1)
	e := newEnv(t, cfg)
	e.Recv.SetStatus(e2e.FailFirst(1))
	e.Subscribe("customer.created", "/c")
	base := serveHTTP(t, e.start().Handler())
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'retried')`)
	e.Recv.Wait(t, "/c", 2)
	e2e.WaitFor(t, 30*time.Second, "the retry's latency to be observed", func() bool {
		return e2e.Scrape(t, base+"/metrics")["walhook_delivery_latency_seconds_count"] == 1
	})
}

// serveHTTP serves h on a free loopback port until the test ends and
// returns the base URL.
func serveHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}
