package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// env is one test's database, config, receiver and (when started) service.
type env struct {
	t       *testing.T
	dsn     string
	cfgPath string
	slot    string // slots are cluster-wide: one per test database
	conn    *pgx.Conn
	recv    *receiver
	svc     *runningService
}

// newEnv creates a database with the demo schema and schemaSQL, installs walhook with cfg
// (the demo config when empty) and starts a receiver.
func newEnv(t *testing.T, cfg string, schemaSQL ...string) *env {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.WithoutCancel(ctx)) })
	if _, err := conn.Exec(ctx, demoSchema); err != nil {
		t.Fatalf("create demo schema: %v", err)
	}
	for _, sql := range schemaSQL {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("create schema: %v", err)
		}
	}
	if cfg == "" {
		cfg = string(demoConfig)
	}
	path := filepath.Join(t.TempDir(), "walhook.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dsn: dsn, cfgPath: path, conn: conn, recv: newReceiver(t), slot: conn.Config().Database}
	e.install()
	return e
}

func (e *env) install() []string {
	e.t.Helper()
	cfg, mapper, err := loadConfig(e.cfgPath)
	if err != nil {
		e.t.Fatalf("load config: %v", err)
	}
	c := common{Slot: e.slot, Publication: cdc.DefaultPublication, AllowHTTP: true}
	changes, err := install(context.Background(), e.conn, c, cfg, mapper)
	if err != nil {
		e.t.Fatalf("install: %v", err)
	}
	return changes
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.conn.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("exec %q: %v", sql, err)
	}
}

// subscribe subscribes owner "1" at site to event, delivering to the
// receiver's path.
func (e *env) subscribe(event, path string, extra ...any) string {
	e.t.Helper()
	site, dialect, secret := any("/"), any("default"), any(nil)
	if len(extra) > 0 {
		site = extra[0]
	}
	if len(extra) > 1 {
		dialect = extra[1]
	}
	if len(extra) > 2 {
		secret = extra[2]
	}
	var id string
	err := e.conn.QueryRow(context.Background(), `SELECT walhook.subscribe($1, $2, '1', $3, $4, $5)::text`,
		event, e.recv.URL+path, site, dialect, secret).Scan(&id)
	if err != nil {
		e.t.Fatalf("subscribe %s: %v", event, err)
	}
	return id
}

type runningService struct {
	stopSoft, stopHard context.CancelFunc
	wg                 conc.WaitGroup
	err                error
}

// start runs walhook against the env's database until stop or test end;
// opts adjust its config.
func (e *env) start(opts ...func(*serviceConfig)) {
	e.t.Helper()
	cfg, mapper, rules, err := loadConfigRules(e.cfgPath)
	if err != nil {
		e.t.Fatalf("load config: %v", err)
	}
	hard, stopHard := context.WithCancel(context.Background())
	soft, stopSoft := context.WithCancel(hard)
	s := &runningService{stopSoft: stopSoft, stopHard: stopHard}
	logger := slog.New(slog.NewTextHandler(testWriter{e.t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	sc := serviceConfig{
		DatabaseURL: e.dsn, Config: cfg, Mapper: mapper, Rules: rules, Slot: e.slot, Publication: cdc.DefaultPublication,
		AllowHTTP: true, AllowPrivate: true, StandbyInterval: 100 * time.Millisecond,
		ShutdownTimeout: 10 * time.Second, HeartbeatInterval: 300 * time.Millisecond, Logger: logger,
	}
	for _, o := range opts {
		o(&sc)
	}
	s.wg.Go(func() { s.err = serve(soft, hard, sc) })
	e.svc = s
	e.t.Cleanup(func() { e.stop() })
}

// stop shuts the service down gracefully and waits for it.
func (e *env) stop() {
	if e.svc == nil {
		return
	}
	e.svc.stopSoft()
	e.svc.wg.Wait()
	e.svc.stopHard()
	if e.svc.err != nil {
		e.t.Errorf("serve: %v", e.svc.err)
	}
	e.svc = nil
}

// confirmed returns the slot's confirmed_flush_lsn.
func (e *env) confirmed() pglogrepl.LSN {
	e.t.Helper()
	si, err := cdc.Slot(context.Background(), e.conn, e.slot)
	if err != nil {
		e.t.Fatal(err)
	}
	return si.ConfirmedFlush
}

func (e *env) currentLSN() pglogrepl.LSN {
	e.t.Helper()
	var s string
	if err := e.conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
		e.t.Fatal(err)
	}
	l, err := pglogrepl.ParseLSN(s)
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", p)
	return len(p), nil
}

// delivery is one request the receiver got.
type delivery struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
}

// envelope decodes a default-dialect body.
func (d delivery) envelope(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(d.Body, &m); err != nil {
		t.Fatalf("body %s: %v", d.Body, err)
	}
	return m
}

type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	got    []delivery
	status func(r *http.Request) int
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, delivery{Method: req.Method, Path: req.URL.Path, Header: req.Header.Clone(), Body: body})
		status := r.status
		r.mu.Unlock()
		code := http.StatusOK
		if status != nil {
			code = status(req)
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(r.Close)
	return r
}

// byEvent returns the deliveries at path keyed by envelope event name; it
// fails on two of the same event.
func (r *receiver) byEvent(t *testing.T, path string) map[string]delivery {
	t.Helper()
	out := map[string]delivery{}
	for _, d := range r.deliveries(path) {
		ev, _ := d.envelope(t)["event"].(string)
		if _, dup := out[ev]; dup {
			t.Fatalf("two %s deliveries at %s", ev, path)
		}
		out[ev] = d
	}
	return out
}

// deliveries returns what has arrived at path ("" for every path).
func (r *receiver) deliveries(path string) []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []delivery
	for _, d := range r.got {
		if path == "" || d.Path == path {
			out = append(out, d)
		}
	}
	return out
}

// waitRows waits until deliveries at path carry every one of the data ids
// in rows (a row may arrive more than once: delivery is at least once), and
// returns the distinct ids that arrived, sorted.
func (r *receiver) waitRows(t *testing.T, path string, rows ...float64) []float64 {
	t.Helper()
	var got []float64
	waitFor(t, 30*time.Second, fmt.Sprintf("rows %v at %s", rows, path), func() bool {
		got = got[:0]
		seen := map[float64]bool{}
		for _, d := range r.deliveries(path) {
			var env struct {
				Data map[string]any `json:"data"`
			}
			if json.Unmarshal(d.Body, &env) != nil {
				continue
			}
			if id, ok := env.Data["id"].(float64); ok && !seen[id] {
				seen[id] = true
				got = append(got, id)
			}
		}
		for _, id := range rows {
			if !seen[id] {
				return false
			}
		}
		return true
	})
	slices.Sort(got)
	return got
}

// wait waits until n deliveries have arrived at path and returns them.
func (r *receiver) wait(t *testing.T, path string, n int) []delivery {
	t.Helper()
	waitFor(t, 30*time.Second, "deliveries to "+path, func() bool { return len(r.deliveries(path)) >= n })
	return r.deliveries(path)
}
