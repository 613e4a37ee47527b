package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/metrics"
)

// startHTTP serves state and m on a free loopback port until the test ends
// and returns the base URL.
func startHTTP(t *testing.T, state *serviceState, m *metrics.Metrics) string {
	t.Helper()
	srv, err := startHealth("127.0.0.1:0", state, m)
	if err != nil {
		t.Fatal(err)
	}
	var wg conc.WaitGroup
	wg.Go(func() { _ = srv.Serve(srv.listener) })
	t.Cleanup(func() {
		_ = srv.Close()
		wg.Wait()
	})
	return "http://" + srv.listener.Addr().String()
}

// get fetches url and returns the status and body; 0 when the request failed.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrape reads the Prometheus text format into series ("name" or
// `name{label="v"}`) → value.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	code, body := get(t, url)
	if code != http.StatusOK {
		t.Fatalf("GET %s = %d %s", url, code, body)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func TestMetricsEndpoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.subscribe("customer.created", "/c")
	// Owner 2 sees tenant 7 only: a tenant 8 row is denied to it.
	e.exec(`SELECT walhook.subscribe('customer.created', $1, '2')`, e.recv.URL+"/bob")
	state, m := newServiceState(), metrics.New(version)
	base := startHTTP(t, state, m)

	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || strings.TrimSpace(body) != "starting" {
		t.Fatalf("/readyz before start = %d %q, want 503 starting", code, body)
	}
	if code, body := get(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d %q, want 200", code, body)
	}
	e.start(func(sc *serviceConfig) {
		sc.State, sc.Metrics, sc.SampleInterval = state, m, 50*time.Millisecond
	})
	waitFor(t, 30*time.Second, "/readyz to say leader streaming", func() bool {
		code, body := get(t, base+"/readyz")
		return code == http.StatusOK && strings.TrimSpace(body) == "leader streaming"
	})

	e.exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'seen by both')`)
	e.exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (2, 8, 'hidden from owner 2')`)
	e.recv.wait(t, "/c", 2)
	e.recv.wait(t, "/bob", 1)

	var got map[string]float64
	waitFor(t, 30*time.Second, "the metrics to count the deliveries", func() bool {
		got = scrape(t, base+"/metrics")
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
		{"walhook_owners_loaded_total", 2},
		{"walhook_leader", 1},
		{"walhook_streaming", 1},
		{`walhook_build_info{version="` + version + `"}`, 1},
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
	standby := newServiceState()
	hard, stopHard := context.WithCancel(context.Background())
	soft, stopSoft := context.WithCancel(hard)
	var wg conc.WaitGroup
	t.Cleanup(func() {
		stopSoft()
		wg.Wait()
		stopHard()
	})
	cfg, mapper, rules, err := loadConfigRules(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	sc := serviceConfig{DatabaseURL: e.dsn, Config: cfg, Mapper: mapper, Rules: rules, Slot: e.slot,
		Publication: cdc.DefaultPublication, AllowHTTP: true, AllowPrivate: true, State: standby, Logger: slog.New(slog.DiscardHandler)}
	wg.Go(func() { _ = serve(soft, hard, sc) })
	h := newHTTPHandler(standby, metrics.New(version))
	waitFor(t, 30*time.Second, "the second process to stand by", func() bool {
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
		{name: "starting", role: roleStarting, want: "starting"},
		{name: "standby", role: roleStandby, wantOK: true, want: "standby"},
		{name: "leader streaming", role: roleLeader, streaming: true, wantOK: true, want: "leader streaming"},
		{name: "leader with the pipeline down", role: roleLeader, want: "leader, pipeline down"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newServiceState()
			s.role.Store(tc.role)
			s.streaming.Store(tc.streaming)
			rec := httptest.NewRecorder()
			newHTTPHandler(s, metrics.New(version)).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
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

func TestStatusJSON(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.recv.status = func(r *http.Request) int {
		if r.URL.Path == "/down" {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	}
	e.subscribe("customer.created", "/c")
	e.subscribe("customer.created", "/down")
	e.start()
	e.exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'x')`)
	e.recv.wait(t, "/c", 1)
	waitFor(t, 30*time.Second, "the failed attempt to be queued for a retry", func() bool {
		var n int
		err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.deliveries`).Scan(&n)
		return err == nil && n == 1
	})

	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"status", "--database-url", e.dsn, "--slot", e.slot, "--json"}, &out, &errb); err != nil {
		t.Fatalf("status --json: %v\n%s", err, errb.String())
	}
	var st statusReport
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		t.Fatalf("status --json output does not parse: %v\n%s", err, out.String())
	}
	if !st.Installed || st.SchemaVersion == 0 {
		t.Fatalf("installed = %v, schema_version = %d; want installed", st.Installed, st.SchemaVersion)
	}
	if st.Slot == nil || st.Slot.Name != e.slot || st.Slot.ConfirmedLSN == "" || !st.Slot.Active {
		t.Fatalf("slot = %+v, want %s, active, with a confirmed LSN", st.Slot, e.slot)
	}
	if st.Leader == nil || st.Leader.PID == 0 {
		t.Fatalf("leader = %+v, want the running service's session", st.Leader)
	}
	if st.Subscriptions["active"] != 2 {
		t.Fatalf("subscriptions = %v, want active 2", st.Subscriptions)
	}
	if st.Deliveries.Queued != 1 || st.Deliveries.Queued != st.Deliveries.Due+st.Deliveries.Later+st.Deliveries.Parked+st.Deliveries.Leased {
		t.Fatalf("deliveries = %+v, want 1 queued, split into due, leased, later and parked", st.Deliveries)
	}
	if len(st.RecentFailures) == 0 || st.RecentFailures[0].ResponseStatus == nil || *st.RecentFailures[0].ResponseStatus != 503 {
		t.Fatalf("recent_failures = %+v, want the 503", st.RecentFailures)
	}
	for _, field := range []string{`"slot"`, `"leader"`, `"subscriptions"`, `"deliveries"`, `"recent_failures"`, `"lag_bytes"`} {
		if !strings.Contains(out.String(), field) {
			t.Errorf("status --json has no %s field:\n%s", field, out.String())
		}
	}

	out.Reset()
	if err := run(context.Background(), []string{"status", "--database-url", e.dsn, "--slot", e.slot}, &out, &errb); err != nil {
		t.Fatalf("status: %v\n%s", err, errb.String())
	}
	t.Logf("walhook status:\n%s", out.String())
	for _, want := range []string{"SLOT", e.slot, "LEADER", "SUBSCRIPTIONS", "DELIVERIES", "RECENT FAILURES", "503"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status text has no %q:\n%s", want, out.String())
		}
	}
}

// TestLatencyCountsRetries: a delivery that succeeds only on its retry from
// the queue is timed from its commit too.
func TestLatencyCountsRetries(t *testing.T) {
	t.Parallel()
	cfg := strings.Replace(string(demoConfig), "retry: [0s, 5s, 5m, 30m, 2h, 5h, 10h, 10h]", "retry: [0s, 200ms]", 1)
	e := newEnv(t, cfg)
	var calls atomic.Int32
	e.recv.status = func(*http.Request) int {
		if calls.Add(1) == 1 {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	}
	e.subscribe("customer.created", "/c")
	m := metrics.New(version)
	base := startHTTP(t, newServiceState(), m)
	e.start(func(sc *serviceConfig) { sc.Metrics = m })
	e.exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'retried')`)
	e.recv.wait(t, "/c", 2)
	waitFor(t, 30*time.Second, "the retry's latency to be observed", func() bool {
		return scrape(t, base+"/metrics")["walhook_delivery_latency_seconds_count"] == 1
	})
}
