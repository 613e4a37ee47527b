// Package e2e is the end-to-end test harness shared by the tests of the
// root package and of cmd/walhook: a fresh database with the demo schema
// (internal/demo), a config file, and a receiver that records every request.
// Only test code imports it. Starting walhook is left to each caller, since
// the root package's own tests cannot import a package that imports it.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/demo"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/mapping"
)

// Env is one test's database, config file and receiver.
type Env struct {
	T       *testing.T
	DSN     string
	CfgPath string
	// Slot is the test's slot name: slots are cluster-wide, so one per test
	// database, named after it.
	Slot string
	Conn *pgx.Conn
	Recv *Receiver
}

// NewEnv creates a database with the demo schema and then schemaSQL, writes
// cfg (the demo config when empty) to a file and starts a receiver. It does
// not install walhook.
func NewEnv(t *testing.T, cfg string, schemaSQL ...string) *Env {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.WithoutCancel(ctx)) })
	if _, err := conn.Exec(ctx, demo.Schema); err != nil {
		t.Fatalf("create demo schema: %v", err)
	}
	for _, sql := range schemaSQL {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("create schema: %v", err)
		}
	}
	if cfg == "" {
		cfg = string(demo.Config)
	}
	path := filepath.Join(t.TempDir(), "walhook.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return &Env{T: t, DSN: dsn, CfgPath: path, Conn: conn, Recv: NewReceiver(t), Slot: conn.Config().Database}
}

// Publication is the publication tests install.
const Publication = cdc.DefaultPublication

// Exec runs sql on the test's connection.
func (e *Env) Exec(sql string, args ...any) {
	e.T.Helper()
	if _, err := e.Conn.Exec(context.Background(), sql, args...); err != nil {
		e.T.Fatalf("exec %q: %v", sql, err)
	}
}

// Subscribe subscribes owner "1" at site to event, delivering to the
// receiver's path; extra is site, dialect, secret.
func (e *Env) Subscribe(event, path string, extra ...any) string {
	e.T.Helper()
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
	err := e.Conn.QueryRow(context.Background(), `SELECT walhook.subscribe($1, $2, '1', $3, $4, $5)::text`,
		event, e.Recv.URL+path, site, dialect, secret).Scan(&id)
	if err != nil {
		e.T.Fatalf("subscribe %s: %v", event, err)
	}
	return id
}

// SubscribeAs subscribes owner to event at the receiver's path.
func (e *Env) SubscribeAs(owner, event, path string) {
	e.T.Helper()
	_, err := e.Conn.Exec(context.Background(), `SELECT walhook.subscribe($1, $2, $3)`, event, e.Recv.URL+path, owner)
	if err != nil {
		e.T.Fatalf("subscribe %s for %s: %v", event, owner, err)
	}
}

// Confirmed returns the slot's confirmed_flush_lsn.
func (e *Env) Confirmed() pglogrepl.LSN {
	e.T.Helper()
	si, err := cdc.Slot(context.Background(), e.Conn, e.Slot)
	if err != nil {
		e.T.Fatal(err)
	}
	return si.ConfirmedFlush
}

// CurrentLSN returns pg_current_wal_insert_lsn(): past every commit made so
// far (pg_current_wal_lsn() may lag behind them).
func (e *Env) CurrentLSN() pglogrepl.LSN {
	e.T.Helper()
	var s string
	if err := e.Conn.QueryRow(context.Background(), `SELECT pg_current_wal_insert_lsn()::text`).Scan(&s); err != nil {
		e.T.Fatal(err)
	}
	l, err := pglogrepl.ParseLSN(s)
	if err != nil {
		e.T.Fatal(err)
	}
	return l
}

// AttemptRow is one row of walhook.attempts.
type AttemptRow struct {
	ID       int64
	EventID  string
	Attempt  int
	Status   string
	Response *int
	Error    *string
}

// Attempts returns the attempts of subscription sub, oldest first.
func (e *Env) Attempts(sub string) []AttemptRow {
	e.T.Helper()
	rows, err := e.Conn.Query(context.Background(), `SELECT id, event_id, attempt, status, response_status, error
		FROM walhook.attempts WHERE subscription_id = $1 ORDER BY id`, sub)
	if err != nil {
		e.T.Fatalf("read attempts: %v", err)
	}
	defer rows.Close()
	var out []AttemptRow
	for rows.Next() {
		var a AttemptRow
		if err := rows.Scan(&a.ID, &a.EventID, &a.Attempt, &a.Status, &a.Response, &a.Error); err != nil {
			e.T.Fatalf("read attempts: %v", err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		e.T.Fatalf("read attempts: %v", err)
	}
	return out
}

// Count runs a query returning one integer.
func (e *Env) Count(sql string, args ...any) int {
	e.T.Helper()
	var n int
	if err := e.Conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		e.T.Fatalf("%s: %v", sql, err)
	}
	return n
}

// SubscriptionState returns a subscription's active flag and status message.
func (e *Env) SubscriptionState(sub string) (active bool, msg string) {
	e.T.Helper()
	var m *string
	if err := e.Conn.QueryRow(context.Background(), `SELECT active, status_message FROM walhook.subscriptions WHERE id = $1`, sub).Scan(&active, &m); err != nil {
		e.T.Fatalf("read subscription: %v", err)
	}
	if m != nil {
		msg = *m
	}
	return active, msg
}

// RetryConfig is the demo config with the given delivery.retry and
// delivery.history, so retries happen within a test's patience.
func RetryConfig(t *testing.T, retry string, history int) string {
	t.Helper()
	cfg := string(demo.Config)
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

// DSNAs returns dsn with another user.
func DSNAs(t *testing.T, dsn, user string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(user)
	return u.String()
}

// RoleName makes a role name for a test: roles are cluster-wide, so it is
// derived from the test's own database, within PostgreSQL's 63 bytes.
func RoleName(prefix, slot string) string {
	role := prefix + slot
	if len(role) > 63 {
		role = role[:63]
	}
	return role
}

// WaitFor polls cond until it holds or the deadline passes.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
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

// TestWriter sends what is written to t.Log, for a logger.
type TestWriter struct{ T testing.TB }

func (w TestWriter) Write(p []byte) (int, error) {
	w.T.Logf("%s", p)
	return len(p), nil
}

// Delivery is one request the receiver got.
type Delivery struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
}

// Envelope decodes a default-dialect body.
func (d Delivery) Envelope(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(d.Body, &m); err != nil {
		t.Fatalf("body %s: %v", d.Body, err)
	}
	return m
}

// SortedIDs returns the data.id of each delivery, sorted: deliveries to one
// target run concurrently, so arrival order is not commit order.
func SortedIDs(t testing.TB, ds []Delivery) []float64 {
	t.Helper()
	var out []float64
	for _, d := range ds {
		data, _ := d.Envelope(t)["data"].(map[string]any)
		id, _ := data["id"].(float64)
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// Receiver records every request and answers 200, or what SetStatus says.
type Receiver struct {
	*httptest.Server
	mu     sync.Mutex
	got    []Delivery
	status func(r *http.Request) int
}

// NewReceiver starts a receiver on 127.0.0.1, closed when the test ends.
func NewReceiver(t testing.TB) *Receiver {
	r := &Receiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, Delivery{Method: req.Method, Path: req.URL.Path, Header: req.Header.Clone(), Body: body})
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

// SetStatus makes the receiver answer with fn's status from now on.
func (r *Receiver) SetStatus(fn func(*http.Request) int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status = fn
}

// DownUntil makes the receiver answer 503 until up is set, then 200.
func (r *Receiver) DownUntil(up *atomic.Bool) {
	r.SetStatus(func(*http.Request) int {
		if up.Load() {
			return http.StatusOK
		}
		return http.StatusServiceUnavailable
	})
}

// FailFirst answers 503 to the first n requests, then 200.
func FailFirst(n int64) func(*http.Request) int {
	var seen atomic.Int64
	return func(*http.Request) int {
		if seen.Add(1) <= n {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	}
}

// ByEvent returns the deliveries at path keyed by envelope event name; it
// fails on two of the same event.
func (r *Receiver) ByEvent(t testing.TB, path string) map[string]Delivery {
	t.Helper()
	out := map[string]Delivery{}
	for _, d := range r.Deliveries(path) {
		ev, _ := d.Envelope(t)["event"].(string)
		if _, dup := out[ev]; dup {
			t.Fatalf("two %s deliveries at %s", ev, path)
		}
		out[ev] = d
	}
	return out
}

// Deliveries returns what has arrived at path ("" for every path).
func (r *Receiver) Deliveries(path string) []Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Delivery
	for _, d := range r.got {
		if path == "" || d.Path == path {
			out = append(out, d)
		}
	}
	return out
}

// WaitRows waits until deliveries at path carry every one of the data ids
// in rows (a row may arrive more than once: delivery is at least once), and
// returns the distinct ids that arrived, sorted.
func (r *Receiver) WaitRows(t testing.TB, path string, rows ...float64) []float64 {
	t.Helper()
	var got []float64
	WaitFor(t, 30*time.Second, fmt.Sprintf("rows %v at %s", rows, path), func() bool {
		got = got[:0]
		seen := map[float64]bool{}
		for _, d := range r.Deliveries(path) {
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

// Wait waits until n deliveries have arrived at path and returns them.
func (r *Receiver) Wait(t testing.TB, path string, n int) []Delivery {
	t.Helper()
	WaitFor(t, 30*time.Second, "deliveries to "+path, func() bool { return len(r.Deliveries(path)) >= n })
	return r.Deliveries(path)
}

// Get fetches url and returns the status and body; 0 when the request failed.
func Get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Scrape reads the Prometheus text format into series ("name" or
// `name{label="v"}`) → value.
func Scrape(t testing.TB, url string) map[string]float64 {
	t.Helper()
	code, body := Get(url)
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

// Config loads the env's config file.
func (e *Env) Config() *mapping.Config {
	e.T.Helper()
	cfg, err := mapping.Load(e.CfgPath)
	if err != nil {
		e.T.Fatalf("load config: %v", err)
	}
	return cfg
}

// GoneAt makes the receiver answer 410 Gone at path and 200 elsewhere.
func (r *Receiver) GoneAt(path string) {
	r.SetStatus(func(req *http.Request) int {
		if req.URL.Path == path {
			return http.StatusGone
		}
		return http.StatusOK
	})
}
