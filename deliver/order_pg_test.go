package deliver

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sourcegraph/conc"
)

// orderReceiver records the events it accepted per key, in the order it
// accepted them, and fails whatever fail says to.
type orderReceiver struct {
	mu       sync.Mutex
	accepted map[string][]int // key → sequence numbers, as accepted
	fail     func(key string, seq int) bool
	requests atomic.Int64
}

func newOrderReceiver(tb testing.TB, fail func(key string, seq int) bool) (*orderReceiver, *httptest.Server) {
	rc := &orderReceiver{accepted: map[string][]int{}, fail: fail}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc.requests.Add(1)
		var ev struct {
			Key string `json:"key"`
			Seq int    `json:"seq"`
		}
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &ev); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		defer rc.mu.Unlock()
		if rc.fail(ev.Key, ev.Seq) {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		rc.accepted[ev.Key] = append(rc.accepted[ev.Key], ev.Seq)
		w.WriteHeader(http.StatusNoContent)
	}))
	tb.Cleanup(srv.Close)
	return rc, srv
}

func (rc *orderReceiver) got(key string) []int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.accepted[key])
}

// orderedRequest is event seq of key, at commit position seq.
func orderedRequest(sub, url, key string, seq int) *Request {
	r := request(sub, url, fmt.Sprintf("evt_%s_%d", key, seq))
	r.Body = fmt.Appendf(nil, `{"key":%q,"seq":%d}`, key, seq)
	r.Attempt = 1
	r.Order = Order{Key: "public.orders/" + key, LSN: uint64(seq), N: 0}
	return r
}

// startOrdered runs a worker and a queue on db retrying by schedule, with
// destinations allowed perHost requests at once, until the test ends.
func startOrdered(tb testing.TB, db *pgxpool.Pool, perHost int, schedule []time.Duration) *Worker {
	tb.Helper()
	w := New(Config{AllowHTTP: true, AllowPrivate: true, Timeout: 10 * time.Second, MaxPerHost: perHost}, db, slog.New(slog.DiscardHandler))
	q := NewQueue(QueueConfig{Name: "sender", PollInterval: 10 * time.Millisecond,
		Retry: RetryPolicy{Schedule: schedule, History: 1000, Jitter: 0.01}}, db, w, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	stop, stopQueue := context.WithCancel(ctx)
	var wg conc.WaitGroup
	wg.Go(func() { _ = w.Run(ctx) })
	wg.Go(func() { _ = q.Run(stop, ctx) })
	tb.Cleanup(func() {
		stopQueue()
		w.Wait()
		cancel()
		wg.Wait()
	})
	return w
}

// waitUntil polls cond every 10ms until it holds, failing the test after pgWait.
func waitUntil(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(pgWait)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func queuedCount(tb testing.TB, db *pgxpool.Pool, where string) int {
	tb.Helper()
	var n int
	if err := db.QueryRow(context.Background(), `SELECT count(*) FROM walhook.deliveries WHERE `+where).Scan(&n); err != nil {
		tb.Fatal(err)
	}
	return n
}

// TestOrderedKeyHeadOfLine: a failing event of one key holds back the later
// events of that key, queued behind it in commit order, and nothing of
// other keys; once it succeeds they follow in order, and the key then sends
// directly again.
func TestOrderedKeyHeadOfLine(t *testing.T) {
	t.Parallel()
	db := newSchemaDB(t)
	var blocked atomic.Bool
	blocked.Store(true)
	rc, srv := newOrderReceiver(t, func(key string, seq int) bool { return key == "a" && blocked.Load() })
	sub := insertSub(t, db, srv.URL+"/", true)
	w := startOrdered(t, db, 16, []time.Duration{0, 50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond,
		50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond})

	submitAll(t, w, orderedRequest(sub, srv.URL+"/", "a", 1), orderedRequest(sub, srv.URL+"/", "a", 2),
		orderedRequest(sub, srv.URL+"/", "b", 3), orderedRequest(sub, srv.URL+"/", "a", 4), orderedRequest(sub, srv.URL+"/", "b", 5))
	// Recorded means durably queued for a: its head awaits a retry, the rest
	// waits behind it without an attempt.
	if got := rc.got("b"); !slices.Equal(got, []int{3, 5}) {
		t.Fatalf("key b got %v, want [3 5]: a failing key must not hold others back", got)
	}
	if n := queuedCount(t, db, `order_key = 'public.orders/a' AND attempt = 0`); n != 2 {
		t.Fatalf("%d deliveries of key a queued behind its head, want 2", n)
	}
	if w.Parked() != 1 {
		t.Fatalf("Parked() = %d, want 1", w.Parked())
	}
	// A new event of the parked key queues behind too, and one of b still
	// goes at once.
	submitAll(t, w, orderedRequest(sub, srv.URL+"/", "a", 6), orderedRequest(sub, srv.URL+"/", "b", 7))
	if got := rc.got("a"); len(got) != 0 {
		t.Fatalf("key a got %v while its head fails", got)
	}
	if got := rc.got("b"); !slices.Equal(got, []int{3, 5, 7}) {
		t.Fatalf("key b got %v, want [3 5 7]", got)
	}

	blocked.Store(false)
	waitUntil(t, "key a's queued events", func() bool { return len(rc.got("a")) == 4 })
	if got := rc.got("a"); !slices.Equal(got, []int{1, 2, 4, 6}) {
		t.Fatalf("key a got %v, want [1 2 4 6] (commit order)", got)
	}
	waitUntil(t, "key a unparked", func() bool { return w.Parked() == 0 })
	submitAll(t, w, orderedRequest(sub, srv.URL+"/", "a", 8))
	if got := rc.got("a"); !slices.Equal(got, []int{1, 2, 4, 6, 8}) {
		t.Fatalf("key a got %v, want [1 2 4 6 8]", got)
	}
	if n := queuedCount(t, db, "true"); n != 0 {
		t.Fatalf("%d deliveries left queued", n)
	}
}

// TestOrderedKeysRandomFailures: many events of few keys, submitted in
// commit order with many requests in flight, to a receiver that fails at
// random: per key, the receiver accepts every event once, in commit order.
func TestOrderedKeysRandomFailures(t *testing.T) {
	t.Parallel()
	db := newSchemaDB(t)
	var mu sync.Mutex
	rnd := rand.New(rand.NewPCG(1, 2))
	rc, srv := newOrderReceiver(t, func(string, int) bool {
		mu.Lock()
		defer mu.Unlock()
		return rnd.Float64() < 0.3
	})
	sub := insertSub(t, db, srv.URL+"/", true)
	schedule := []time.Duration{0}
	for range 30 { // 0.3^30: never runs out
		schedule = append(schedule, 5*time.Millisecond)
	}
	w := startOrdered(t, db, 16, schedule)

	const keys, perKey = 8, 40
	var reqs []*Request
	for seq := range keys * perKey {
		reqs = append(reqs, orderedRequest(sub, srv.URL+"/", fmt.Sprint(seq%keys), seq))
	}
	submitAll(t, w, reqs...)
	for k := range keys {
		key := fmt.Sprint(k)
		waitUntil(t, "key "+key+"'s events", func() bool { return len(rc.got(key)) >= perKey })
	}
	waitUntil(t, "every key unparked", func() bool { return w.Parked() == 0 })
	for k := range keys {
		got := rc.got(fmt.Sprint(k))
		want := make([]int, 0, perKey)
		for seq := k; seq < keys*perKey; seq += keys {
			want = append(want, seq)
		}
		if !slices.Equal(got, want) {
			t.Errorf("key %d accepted %v, want %v", k, got, want)
		}
	}
	t.Logf("%d requests for %d events", rc.requests.Load(), keys*perKey)
}

// TestOrderedParkedAcrossRestart: keys a previous run left queued are
// parked when a worker starts, so new events of them queue behind.
func TestOrderedParkedAcrossRestart(t *testing.T) {
	t.Parallel()
	db := newSchemaDB(t)
	rc, srv := newOrderReceiver(t, func(string, int) bool { return false })
	sub := insertSub(t, db, srv.URL+"/", true)
	// What a run that stopped left: key a's head waiting for a retry an
	// hour from now, with one event behind it.
	if _, err := db.Exec(context.Background(), `INSERT INTO walhook.deliveries
		(subscription_id, event_id, event, target_url, body, attempt, next_attempt_at, order_key, order_lsn, order_n)
		VALUES ($1, 'evt_a_1', 'order.created', $2, '{"key":"a","seq":1}', 1, now() + interval '1 hour', 'public.orders/a', 1, 0),
		       ($1, 'evt_a_2', 'order.created', $2, '{"key":"a","seq":2}', 0, now(), 'public.orders/a', 2, 0)`,
		sub, srv.URL+"/"); err != nil {
		t.Fatal(err)
	}
	w := startOrdered(t, db, 16, []time.Duration{0, time.Hour})
	submitAll(t, w, orderedRequest(sub, srv.URL+"/", "a", 3), orderedRequest(sub, srv.URL+"/", "b", 4))
	if got := rc.got("b"); !slices.Equal(got, []int{4}) {
		t.Fatalf("key b got %v, want [4]", got)
	}
	if got := rc.got("a"); len(got) != 0 {
		t.Fatalf("key a got %v before its queued head", got)
	}
	if n := queuedCount(t, db, `order_key = 'public.orders/a'`); n != 3 {
		t.Fatalf("%d deliveries of key a queued, want 3", n)
	}
	// The head comes due: all three follow in order.
	if _, err := db.Exec(context.Background(), `UPDATE walhook.deliveries SET next_attempt_at = now() WHERE event_id = 'evt_a_1'`); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "key a's events", func() bool { return len(rc.got("a")) == 3 })
	if got := rc.got("a"); !slices.Equal(got, []int{1, 2, 3}) {
		t.Fatalf("key a got %v, want [1 2 3]", got)
	}
}
