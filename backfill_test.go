package walhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sourcegraph/conc"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/internal/demo"
	"github.com/walhook/walhook/internal/e2e"
	"github.com/walhook/walhook/internal/pgtest"
)

// backfill starts a backfill of sub and returns its id.
func (e *env) backfill(sub string, tables ...string) int64 {
	e.T.Helper()
	var id int64
	var arg any
	if len(tables) > 0 {
		arg = tables
	}
	if err := e.Conn.QueryRow(context.Background(), `SELECT walhook.backfill($1, $2)`, sub, arg).Scan(&id); err != nil {
		e.T.Fatalf("backfill(%s): %v", sub, err)
	}
	return id
}

// waitBackfill waits until every table of backfill id has status.
func (e *env) waitBackfill(id int64, status string, timeout time.Duration) {
	e.T.Helper()
	e2e.WaitFor(e.T, timeout, fmt.Sprintf("backfill %d %s", id, status), func() bool {
		return e.Count(`SELECT count(*) FROM walhook.backfills WHERE id = $1 AND status <> $2`, id, status) == 0
	})
}

// existingRows counts, per order id, the order.existing events at path of
// backfill id, checking their marker.
func existingRows(t *testing.T, r *e2e.Receiver, path string, id int64) map[int]int {
	t.Helper()
	out := map[int]int{}
	for _, d := range r.Deliveries(path) {
		var env struct {
			Event    string         `json:"event"`
			Backfill int64          `json:"backfill"`
			Data     map[string]any `json:"data"`
		}
		if err := json.Unmarshal(d.Body, &env); err != nil {
			t.Fatalf("body %s: %v", d.Body, err)
		}
		if env.Event != "order.existing" {
			continue
		}
		if env.Backfill != id {
			t.Fatalf("backfill marker %d, want %d", env.Backfill, id)
		}
		n, _ := env.Data["id"].(float64)
		out[int(n)]++
	}
	return out
}

// TestBackfillExistingRows: 10,000 existing orders reach the subscription
// the backfill is for, once each, as order.existing; another owner's
// backfill gets only the rows its rule allows; other subscriptions get
// nothing.
func TestBackfillExistingRows(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) SELECT i, CASE WHEN i % 2 = 0 THEN 7 ELSE 8 END, i FROM generate_series(1, 10000) i`)
	admin := e.Subscribe("order.*", "/admin")
	var bob string
	if err := e.Conn.QueryRow(context.Background(), `SELECT walhook.subscribe('order.created', $1, '2')::text`, e.Recv.URL+"/bob").Scan(&bob); err != nil {
		t.Fatal(err)
	}
	e.Subscribe("order.*", "/other")
	e.start()

	// Bad input is refused up front.
	_, err := e.Conn.Exec(context.Background(), `SELECT walhook.backfill($1, ARRAY['public.audit_log'])`, admin)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22023" {
		t.Fatalf("backfill of an unmapped table: %v, want 22023", err)
	}

	a := e.backfill(admin)
	b := e.backfill(bob, "public.orders")
	e.waitBackfill(a, "done", 60*time.Second)
	e.waitBackfill(b, "done", 60*time.Second)
	e2e.WaitFor(t, 60*time.Second, "every row at /admin", func() bool { return len(e.Recv.Deliveries("/admin")) >= 10000 })
	e2e.WaitFor(t, 60*time.Second, "tenant 7's rows at /bob", func() bool { return len(e.Recv.Deliveries("/bob")) >= 5000 })

	got := existingRows(t, e.Recv, "/admin", a)
	if len(got) != 10000 {
		t.Fatalf("%d distinct rows at /admin, want 10000", len(got))
	}
	for id, n := range got {
		if n != 1 {
			t.Fatalf("row %d arrived %d times, want once", id, n)
		}
	}
	got = existingRows(t, e.Recv, "/bob", b)
	if len(got) != 5000 {
		t.Fatalf("%d distinct rows at /bob, want tenant 7's 5000", len(got))
	}
	for id := range got {
		if id%2 != 0 {
			t.Fatalf("row %d (tenant 8) reached bob", id)
		}
	}
	if n := len(e.Recv.Deliveries("/other")); n != 0 {
		t.Fatalf("%d deliveries to another subscription, want none", n)
	}
	// The customers table offers customer.existing too, but admin takes
	// only order.*: its backfill read public.orders only.
	if n := e.Count(`SELECT count(*) FROM walhook.backfills WHERE id = $1`, a); n != 1 {
		t.Fatalf("backfill %d has %d tables, want 1 (public.orders)", a, n)
	}
	if n := e.Count(`SELECT rows_sent::int FROM walhook.backfills WHERE id = $1`, a); n != 10000 {
		t.Fatalf("rows_sent = %d, want 10000", n)
	}
	st, err := Status(context.Background(), e.Conn, e.Slot)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Backfills) != 2 || st.Backfills[1].ID != a || st.Backfills[1].Status != "done" || st.Backfills[1].RowsSent != 10000 {
		t.Fatalf("Status().Backfills = %+v, want backfills %d and %d, done", st.Backfills, b, a)
	}
}

// TestBackfillConcurrentWrites: rows updated and deleted while the backfill
// reads them end in their final state at the receiver. One delivery at a
// time to the host keeps arrival order the order of the stream.
func TestBackfillConcurrentWrites(t *testing.T) {
	t.Parallel()
	cfg := replace(t, string(demo.Config), "max_per_host: 16", "max_per_host: 1")
	e := newEnv(t, cfg)
	const rows = 3000
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) SELECT i, 7, 0 FROM generate_series(1, $1::int) i`, rows)
	sub := e.Subscribe("order.*", "/all")
	e.start(func(c *Config) { c.BackfillChunk = 50 })
	id := e.backfill(sub)
	e.writeDuringBackfill(id, rows)
	e.waitBackfill(id, "done", 120*time.Second)
	deleted := e.assertLastEvents(rows)
	if deleted == 0 {
		t.Fatalf("no row was deleted while the backfill ran: the test proves nothing")
	}
}

// writeDuringBackfill writes until backfill id is done: each round bumps
// some of rows orders' total and deletes one, ahead of and behind the reader.
func (e *env) writeDuringBackfill(id int64, rows int) {
	for round := 1; round <= 10000; round++ {
		if e.Count(`SELECT count(*) FROM walhook.backfills WHERE id = $1 AND status <> 'done'`, id) == 0 {
			break
		}
		k := (round * 37) % rows
		e.Exec(`UPDATE public.orders SET total = total + 1 WHERE id IN ($1, $2, $3)`, k+1, (k+500)%rows+1, (k*7)%rows+1)
		if round%5 == 0 {
			e.Exec(`DELETE FROM public.orders WHERE id = $1`, (k*13)%rows+1)
		}
	}
}

// TestBackfillOrderedAtReceiver: with ordering: key, the backfill's
// guarantee holds at the receiver, not only at submission: existing rows
// and live changes of them, sent up to max_per_host at a time to a
// receiver failing a fifth of the requests at random, end with each row's
// last accepted event showing its final state, or its delete.
func TestBackfillOrderedAtReceiver(t *testing.T) {
	t.Parallel()
	e := newEnv(t, orderedConfig(t))
	const rows = 2000
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) SELECT i, 7, 0 FROM generate_series(1, $1::int) i`, rows)
	sub := e.Subscribe("order.*", "/all", "/", "ordered")
	var mu sync.Mutex
	rnd := rand.New(rand.NewPCG(3, 5))
	accepted := map[string]bool{}
	e.Recv.SetStatus(func(r *http.Request) int {
		mu.Lock()
		defer mu.Unlock()
		if rnd.Float64() < 0.2 {
			return http.StatusServiceUnavailable
		}
		accepted[r.Header.Get("webhook-id")] = true
		return http.StatusOK
	})
	e.start(func(c *Config) { c.BackfillChunk = 50 })
	id := e.backfill(sub)
	e.writeDuringBackfill(id, rows)
	e.waitBackfill(id, "done", 120*time.Second)
	// Failed requests are retried: the end is when the slot has passed the
	// last write (every delivery before it sent or queued) and nothing
	// waits in the queue.
	keep := func(d e2e.Delivery) bool {
		mu.Lock()
		defer mu.Unlock()
		return accepted[d.Header.Get("webhook-id")]
	}
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) VALUES ($1, 7, 0)`, rows+2)
	end := e.CurrentLSN()
	deadline := time.Now().Add(60 * time.Second)
	for e.Confirmed() < end || e.Count(`SELECT count(*) FROM walhook.deliveries`) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after 60s: slot at %s, want %s; %d deliveries queued (%d due)", e.Confirmed(), end,
				e.Count(`SELECT count(*) FROM walhook.deliveries`), e.Count(`SELECT count(*) FROM walhook.deliveries WHERE next_attempt_at <= now()`))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if deleted := e.assertLastEventsOf(rows, keep); deleted == 0 {
		t.Fatalf("no row was deleted while the backfill ran: the test proves nothing")
	}
}

// TestBackfillResumesAfterRestart: a backfill stopped mid-way resumes from
// its last finished chunk when walhook starts again, and every row arrives.
func TestBackfillResumesAfterRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) SELECT i, 7, i FROM generate_series(1, 10000) i`)
	sub := e.Subscribe("order.*", "/all")
	chunk := func(c *Config) { c.BackfillChunk = 100 }
	e.start(chunk)
	id := e.backfill(sub)
	e2e.WaitFor(t, 60*time.Second, "some chunks", func() bool {
		return e.Count(`SELECT rows_sent::int FROM walhook.backfills WHERE id = $1`, id) >= 2000
	})
	e.stop()
	if n := e.Count(`SELECT count(*) FROM walhook.backfills WHERE id = $1 AND status = 'running'`, id); n != 1 {
		t.Fatalf("backfill not running after the stop (%d rows), want it to resume", n)
	}
	at := e.Count(`SELECT rows_sent::int FROM walhook.backfills WHERE id = $1`, id)
	e.svc = nil
	e.start(chunk)
	e.waitBackfill(id, "done", 120*time.Second)
	got := existingRows(t, e.Recv, "/all", id)
	e2e.WaitFor(t, 60*time.Second, "every row", func() bool {
		got = existingRows(t, e.Recv, "/all", id)
		return len(got) == 10000
	})
	// Resumed, not started over: at most the unfinished chunk is sent again.
	total := 0
	for _, n := range got {
		total += n
	}
	if dup := total - 10000; dup > 2*100 {
		t.Fatalf("%d rows sent again after resuming at %d, want at most a chunk or two", dup, at)
	}
}

// TestBackfillCancel: a cancelled backfill reads no further chunk.
func TestBackfillCancel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) SELECT i, 7, i FROM generate_series(1, 10000) i`)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'a')`)
	sub := e.Subscribe("order.*", "/all")
	cust := e.Subscribe("customer.*", "/cust")
	e.start(func(c *Config) { c.BackfillChunk = 100 })
	id := e.backfill(sub)
	e2e.WaitFor(t, 60*time.Second, "a chunk", func() bool {
		return e.Count(`SELECT rows_sent::int FROM walhook.backfills WHERE id = $1`, id) >= 100
	})
	var ok bool
	if err := e.Conn.QueryRow(context.Background(), `SELECT walhook.cancel_backfill($1)`, id).Scan(&ok); err != nil || !ok {
		t.Fatalf("cancel_backfill = %v, %v; want true", ok, err)
	}
	at := e.Count(`SELECT rows_sent::int FROM walhook.backfills WHERE id = $1`, id)
	// Backfills run one after another: once a later one is done, the
	// cancelled one has stopped.
	later := e.backfill(cust)
	e.waitBackfill(later, "done", 60*time.Second)
	e.Recv.Wait(t, "/cust", 1)
	if got := len(existingRows(t, e.Recv, "/all", id)); got >= 10000 || got > at+100 {
		t.Fatalf("%d rows after cancelling at %d, want at most the chunk under way more", got, at)
	}
	if err := e.Conn.QueryRow(context.Background(), `SELECT walhook.cancel_backfill($1)`, id).Scan(&ok); err != nil || ok {
		t.Fatalf("cancel_backfill again = %v, %v; want false", ok, err)
	}
}

// TestBackfillRate measures, with WALHOOK_BACKFILL_BENCH=<rows> (it skips
// without), in one run against one counting receiver on 127.0.0.1:
//   - the live catch-up rate: a backlog of rows/5 inserts (at most 200,000)
//     in transactions of 100, written while walhook is stopped;
//   - the backfill rate of <rows> existing rows, while a writer inserts one
//     live row per transaction at 200/s, with the live rows' commit→receipt
//     latency meanwhile;
//   - the test process's peak RSS during the backfill (walhook and the
//     receiver, which keeps counts only; PostgreSQL runs apart).
//
// WALHOOK_BACKFILL_CHUNK sets the chunk size (default 1,000).
func TestBackfillRate(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("WALHOOK_BACKFILL_BENCH"))
	if n <= 0 {
		t.Skip("set WALHOOK_BACKFILL_BENCH=<rows> to measure the backfill rate")
	}
	e := newEnv(t, "")
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) SELECT i, 7, i FROM generate_series(1, $1::int) i`, n)
	e.Exec(`ANALYZE public.orders`)
	rc := newCountingReceiver(t)
	subscribe := func(event, path string) string {
		var id string
		if err := e.Conn.QueryRow(context.Background(), `SELECT walhook.subscribe($1, $2, '1')::text`, event, rc.URL+path).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	sub := subscribe("order.*", "/all")
	subscribe("customer.created", "/live")
	chunk, _ := strconv.Atoi(os.Getenv("WALHOOK_BACKFILL_CHUNK"))
	opt := func(c *Config) { c.BackfillChunk = chunk }

	// Live catch-up: a backlog written while walhook is stopped.
	live := min(n/5, 200_000) / 100 * 100
	for i := 0; i < live; i += 10_000 {
		e.Exec(`DO $$ BEGIN FOR b IN 0..99 LOOP
			INSERT INTO public.customers (tenant_id, name) SELECT 7, 'c' FROM generate_series(1, 100);
			COMMIT; END LOOP; END $$`)
	}
	start := time.Now()
	e.start(opt)
	e2e.WaitFor(t, 30*time.Minute, "the live backlog", func() bool { return rc.count("/live") >= live })
	catchUp := time.Since(start)
	rc.resetLatency()

	// The backfill, beside a steady live writer.
	runtime.GC()
	debug.FreeOSMemory()
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) // resets VmHWM
	wconn, err := pgx.Connect(context.Background(), e.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer wconn.Close(context.Background())
	stop := make(chan struct{})
	var writer conc.WaitGroup
	var written atomic.Int64
	writer.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := wconn.Exec(context.Background(), `INSERT INTO public.customers (tenant_id, name) VALUES (7, 'live')`); err != nil {
				t.Error(err)
				return
			}
			written.Add(1)
		}
	})
	start = time.Now()
	id := e.backfill(sub)
	e2e.WaitFor(t, 30*time.Minute, "every row", func() bool { return rc.count("/all") >= n })
	el := time.Since(start)
	close(stop)
	writer.Wait()
	e.waitBackfill(id, "done", time.Minute)
	e2e.WaitFor(t, time.Minute, "the live rows", func() bool { return rc.count("/live") >= live+int(written.Load()) })
	p50, p99, max := rc.latency()
	t.Logf("live catch-up: %d rows in %s, %.0f rows/s", live, catchUp.Round(time.Millisecond), float64(live)/catchUp.Seconds())
	t.Logf("backfill of %d rows: %s, %.0f rows/s; peak RSS %.0f MiB", n, el.Round(time.Millisecond), float64(n)/el.Seconds(),
		float64(peakRSS())/(1<<20))
	t.Logf("meanwhile %d live rows at 200/s: commit→receipt p50 %s, p99 %s, max %s", written.Load(),
		p50.Round(time.Millisecond), p99.Round(time.Millisecond), max.Round(time.Millisecond))
}

// countingReceiver counts requests per path and keeps the commit→receipt
// latency of each, from the envelope's occurred_at; it keeps no bodies, so
// that a measurement of memory is walhook's.
type countingReceiver struct {
	*httptest.Server
	mu  sync.Mutex
	n   map[string]int
	lat []time.Duration
}

func newCountingReceiver(t *testing.T) *countingReceiver {
	rc := &countingReceiver{n: map[string]int{}}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var env struct {
			OccurredAt time.Time `json:"occurred_at"`
		}
		err := json.NewDecoder(r.Body).Decode(&env)
		rc.mu.Lock()
		rc.n[r.URL.Path]++
		if err == nil && r.URL.Path == "/live" {
			rc.lat = append(rc.lat, time.Since(env.OccurredAt))
		}
		rc.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *countingReceiver) count(path string) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.n[path]
}

func (rc *countingReceiver) resetLatency() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.lat = nil
}

func (rc *countingReceiver) latency() (p50, p99, max time.Duration) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.lat) == 0 {
		return 0, 0, 0
	}
	l := slices.Clone(rc.lat)
	slices.Sort(l)
	return l[len(l)/2], l[len(l)*99/100], l[len(l)-1]
}

// peakRSS is the process's VmHWM in bytes; 0 when unknown.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// TestBackfillOwnerScope: an application session acts only for its owner:
// it cannot backfill or cancel another owner's subscription, and
// walhook.backfills shows it only its own.
func TestBackfillOwnerScope(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	other := e.Subscribe("order.created", "/other") // owner "1"
	theirs := e.backfill(other)
	ctx := context.Background()
	app := e.loginRole("app_", "walhook_app")
	if _, err := app.Exec(ctx, `SET walhook.owner = '2'`); err != nil {
		t.Fatal(err)
	}
	var mine string
	if err := app.QueryRow(ctx, `SELECT walhook.subscribe('order.*', 'https://example.com/h', '2')::text`).Scan(&mine); err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := app.QueryRow(ctx, `SELECT walhook.backfill($1)`, mine).Scan(&id); err != nil {
		t.Fatalf("backfill own subscription: %v", err)
	}
	for _, tc := range []struct {
		name, sql string
		arg       any
	}{
		{"backfill", `SELECT walhook.backfill($1)`, other},
		{"cancel", `SELECT walhook.cancel_backfill($1)`, theirs},
	} {
		_, err := app.Exec(ctx, tc.sql, tc.arg)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Fatalf("%s for another owner: %v, want 42501", tc.name, err)
		}
	}
	var seen []int64
	rows, err := app.Query(ctx, `SELECT id FROM walhook.backfills ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	seen, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil || len(seen) != 1 || seen[0] != id {
		t.Fatalf("walhook.backfills as owner 2 = %v, %v; want [%d]", seen, err, id)
	}
}

// TestBackfillFailsForInactiveSubscription: a subscription deactivated
// during its backfill fails the backfill, saying why, rather than have its
// rows skipped without a word.
func TestBackfillFailsForInactiveSubscription(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) SELECT i, 7, i FROM generate_series(1, 10000) i`)
	sub := e.Subscribe("order.*", "/all")
	e.start(func(c *Config) { c.BackfillChunk = 100 })
	id := e.backfill(sub)
	e2e.WaitFor(t, 60*time.Second, "a chunk", func() bool {
		return e.Count(`SELECT rows_sent::int FROM walhook.backfills WHERE id = $1`, id) >= 100
	})
	e.Exec(`SELECT walhook.deactivate($1)`, sub)
	e.waitBackfill(id, "failed", 60*time.Second)
	var msg string
	if err := e.Conn.QueryRow(context.Background(), `SELECT error FROM walhook.backfills WHERE id = $1`, id).Scan(&msg); err != nil || !strings.Contains(msg, "inactive") {
		t.Fatalf("error = %q, %v; want it to say the subscription is inactive", msg, err)
	}
}

// assertLastEvents waits for the stream's end and checks that each of rows
// 1..rows ends at the receiver in its state in the table: its last event
// carries the table's total, or is order.deleted for a row deleted. It
// returns how many were deleted.
func (e *env) assertLastEvents(rows int) int { return e.assertLastEventsOf(rows, nil) }

// assertLastEventsOf is assertLastEvents over the deliveries keep accepts
// (every one when nil): those the receiver answered 2xx.
func (e *env) assertLastEventsOf(rows int, keep func(e2e.Delivery) bool) int {
	t := e.T
	t.Helper()
	ctx := context.Background()
	// A last write marks the end of the stream to wait for.
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) VALUES ($1, 7, 0)`, rows+1)
	e.Recv.WaitRows(t, "/all", float64(rows+1))

	final := map[int]string{}
	rs, err := e.Conn.Query(ctx, `SELECT id, total::text FROM public.orders WHERE id <= $1`, rows)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var k int
		var total string
		if err := rs.Scan(&k, &total); err != nil {
			t.Fatal(err)
		}
		final[k] = total
	}
	rs.Close()
	type seen struct{ event, total string }
	last := map[int]seen{}
	for _, d := range e.Recv.Deliveries("/all") {
		if keep != nil && !keep(d) {
			continue
		}
		env := d.Envelope(t)
		data, _ := env["data"].(map[string]any)
		k, _ := data["id"].(float64)
		total := fmt.Sprint(data["total"])
		last[int(k)] = seen{event: env["event"].(string), total: total}
	}
	deleted := 0
	for k := 1; k <= rows; k++ {
		l, ok := last[k]
		want, exists := final[k]
		switch {
		case !exists:
			deleted++
			if l.event != "order.deleted" {
				t.Fatalf("row %d was deleted; its last event is %q, want order.deleted", k, l.event)
			}
		case !ok:
			t.Fatalf("row %d never arrived", k)
		case l.event == "order.deleted":
			t.Fatalf("row %d exists; its last event is order.deleted", k)
		default:
			w, _ := strconv.ParseFloat(want, 64)
			if g, _ := strconv.ParseFloat(l.total, 64); g != w {
				t.Fatalf("row %d: last event %s has total %s, the table %s", k, l.event, l.total, want)
			}
		}
	}
	return deleted
}

// TestBackfillChunkWindow: in every chunk, a row updated and a row deleted
// after the chunk was read and before its high watermark end in their
// final state at the receiver: the chunk leaves them to their live events.
// public.orders has REPLICA IDENTITY FULL (order.paid reads old.status),
// under which the stream marks every column as key, so this also checks
// that the window keys changes by the backfill's own key.
func TestBackfillChunkWindow(t *testing.T) {
	t.Parallel()
	cfg := replace(t, string(demo.Config), "max_per_host: 16", "max_per_host: 1")
	e := newEnv(t, cfg)
	const rows = 200
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) SELECT i, 7, 0 FROM generate_series(1, $1::int) i`, rows)
	sub := e.Subscribe("order.*", "/all")
	hc := pgtest.Connect(t, e.DSN)
	var (
		mu      sync.Mutex
		hookErr error
		chunks  int
	)
	svc := e.newService(func(c *Config) { c.BackfillChunk = 50 })
	svc.hooks.chunkRead = func(rs []change.Row) {
		if len(rs) < 2 {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		first, last := string(rs[0][0].Text), string(rs[len(rs)-1][0].Text)
		for q, id := range map[string]string{
			`UPDATE public.orders SET total = total + 5 WHERE id = $1::bigint`: first,
			`DELETE FROM public.orders WHERE id = $1::bigint`:                  last,
		} {
			if _, err := hc.Exec(context.Background(), q, id); err != nil && hookErr == nil {
				hookErr = err
			}
		}
		chunks++
	}
	e.run(svc)
	id := e.backfill(sub)
	e.waitBackfill(id, "done", 60*time.Second)
	mu.Lock()
	err, n := hookErr, chunks
	mu.Unlock()
	if err != nil {
		t.Fatalf("write inside a chunk's window: %v", err)
	}
	if n != rows/50 {
		t.Fatalf("wrote inside %d chunks' windows, want %d", n, rows/50)
	}
	if deleted := e.assertLastEvents(rows); deleted != n {
		t.Fatalf("%d rows deleted, want %d", deleted, n)
	}
}

// TestBackfillMetrics: /metrics counts a backfill's rows per table and its
// tables by how they finished, and says when none is being read.
func TestBackfillMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) SELECT i, 7, i FROM generate_series(1, 2500) i`)
	sub := e.Subscribe("order.*", "/all")
	svc := e.newService()
	base := serveHTTP(t, svc.Handler())
	e.run(svc)
	id := e.backfill(sub)
	e.waitBackfill(id, "done", 60*time.Second)
	want := map[string]float64{
		`walhook_backfill_rows_sent_total{table="public.orders"}`: 2500,
		`walhook_backfill_tables_finished_total{status="done"}`:   1,
		`walhook_backfill_tables_finished_total{status="failed"}`: 0,
		`walhook_backfill_running`:                                0,
	}
	var got map[string]float64
	e2e.WaitFor(t, 10*time.Second, "the metrics to count the backfill", func() bool {
		got = e2e.Scrape(t, base+"/metrics")
		for k, v := range want {
			if got[k] != v {
				return false
			}
		}
		return true
	})
}
