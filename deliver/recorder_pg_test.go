package deliver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/schema"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// pgWait bounds every wait on the database or a delivery; it exists only so
// that a hang fails instead of running into the binary's timeout.
const pgWait = 30 * time.Second

// newSchemaDB returns a pool on a fresh database with the walhook schema
// installed.
func newSchemaDB(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	ctx := context.Background()
	dsn := pgtest.NewDatabase(tb)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		tb.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := schema.Install(ctx, conn, schema.Options{
		Events:   []schema.Event{{Name: "order.created", Table: "public.orders", Operation: "insert"}},
		Settings: map[string]string{"allow_http": "true"},
	}); err != nil {
		tb.Fatalf("schema.Install() = %v", err)
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		tb.Fatalf("pgxpool.New() = %v", err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// insertSub adds a subscription to order.created at url and returns its id.
func insertSub(tb testing.TB, db *pgxpool.Pool, url string, active bool) string {
	tb.Helper()
	var id string
	if err := db.QueryRow(context.Background(), `INSERT INTO walhook.subscriptions (owner, event, target_url, active)
		VALUES ('acme', 'order.created', $1, $2) RETURNING id::text`, url, active).Scan(&id); err != nil {
		tb.Fatalf("insert subscription: %v", err)
	}
	return id
}

// dbNow is the database's clock, which next_attempt_at is computed from.
func dbNow(tb testing.TB, db *pgxpool.Pool) time.Time {
	tb.Helper()
	var now time.Time
	if err := db.QueryRow(context.Background(), `SELECT clock_timestamp()`).Scan(&now); err != nil {
		tb.Fatalf("clock_timestamp(): %v", err)
	}
	return now
}

// newReceiver answers each request with the status in its ?status= (204 by
// default), a Retry-After of ?retry_after= when given, and a body naming
// the status, or with ?binary one that is not valid text. httptest listens on 127.0.0.1 only.
func newReceiver(tb testing.TB) *httptest.Server {
	tb.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status := http.StatusNoContent
		if s := r.URL.Query().Get("status"); s != "" {
			status, _ = strconv.Atoi(s)
		}
		if ra := r.URL.Query().Get("retry_after"); ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		w.WriteHeader(status)
		if r.URL.Query().Has("binary") {
			_, _ = w.Write([]byte("bad\x00\xffbytes"))
			return
		}
		fmt.Fprintf(w, "answer %d", status)
	}))
	tb.Cleanup(srv.Close)
	return srv
}

// testPolicy retries after 10 minutes, then an hour: far enough that no
// retry comes due while a test runs.
var testPolicy = RetryPolicy{Schedule: []time.Duration{0, 10 * time.Minute, time.Hour}, History: 3}

// startWorker runs a Worker recording into db under policy until the test
// ends. One request per destination at a time, so attempts finish, and are
// recorded, in the order they were submitted.
func startWorker(tb testing.TB, db *pgxpool.Pool, policy RetryPolicy) *Worker {
	tb.Helper()
	w := New(Config{AllowHTTP: true, AllowPrivate: true, Timeout: 10 * time.Second, MaxPerHost: 1}, db, slog.New(slog.DiscardHandler))
	p := policy.withDefaults()
	w.rec.policy.Store(&p)
	ctx, cancel := context.WithCancel(context.Background())
	var wg conc.WaitGroup
	wg.Go(func() { _ = w.Run(ctx) })
	tb.Cleanup(func() {
		w.Wait()
		cancel()
		wg.Wait()
	})
	return w
}

// submitAll submits rs and waits until each has been recorded (Done called).
func submitAll(tb testing.TB, w *Worker, rs ...*Request) {
	tb.Helper()
	done := make(chan struct{}, len(rs))
	for _, r := range rs {
		prev := r.Done
		r.Done = func() {
			if prev != nil {
				prev()
			}
			done <- struct{}{}
		}
		if err := w.Submit(context.Background(), r); err != nil {
			tb.Fatalf("Submit() = %v", err)
		}
	}
	deadline := time.After(pgWait)
	for range rs {
		select {
		case <-done:
		case <-deadline:
			tb.Fatalf("deliveries not recorded within %s", pgWait)
		}
	}
}

func request(sub, url, eventID string) *Request {
	return &Request{SubscriptionID: sub, EventID: eventID, Event: "order.created", URL: url,
		Method: http.MethodPost, Body: []byte(`{"id":"` + eventID + `"}`)}
}

type attemptRowDB struct {
	status          string
	responseStatus  *int
	excerpt, errMsg *string
	attempt         int
	url, method     string
	headers         map[string]string
	body            []byte
	durationMS      *int
}

func readAttempt(ctx context.Context, db *pgxpool.Pool, eventID string) (attemptRowDB, error) {
	var a attemptRowDB
	err := db.QueryRow(ctx, `SELECT status, response_status, response_excerpt, error, attempt, target_url,
			request_method, coalesce(request_headers, '{}'), request_body, duration_ms
		FROM walhook.attempts WHERE event_id = $1`, eventID).
		Scan(&a.status, &a.responseStatus, &a.excerpt, &a.errMsg, &a.attempt, &a.url, &a.method, &a.headers, &a.body, &a.durationMS)
	return a, err
}

type queuedRowDB struct {
	attempt      int
	next         time.Time
	lockedBy     *string
	headers      map[string]string
	body         []byte
	url, eventID string
}

func readQueued(ctx context.Context, db *pgxpool.Pool, sub string) ([]queuedRowDB, error) {
	rows, err := db.Query(ctx, `SELECT attempt, next_attempt_at, locked_by, coalesce(headers, '{}'), body, target_url, event_id
		FROM walhook.deliveries WHERE subscription_id = $1 ORDER BY id`, sub)
	if err != nil {
		return nil, err
	}
	var q queuedRowDB
	var out []queuedRowDB
	_, err = pgx.ForEachRow(rows, []any{&q.attempt, &q.next, &q.lockedBy, &q.headers, &q.body, &q.url, &q.eventID}, func() error {
		out = append(out, q)
		return nil
	})
	return out, err
}

func ptrString[T any](p *T) string {
	if p == nil {
		return "NULL"
	}
	return fmt.Sprint(*p)
}

// TestRecorderWritesAttempt: each outcome is written as one attempt row with
// its status, response, duration, request headers without credentials and
// body; a failed first attempt is queued for the schedule's (or the
// receiver's) delay; Done runs only once all of it is committed.
func TestRecorderWritesAttempt(t *testing.T) {
	t.Parallel()
	db := newSchemaDB(t)
	w := startWorker(t, db, testPolicy)
	srv := newReceiver(t)
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close() // nothing listens there any more: connection refused

	const jitter = DefaultJitter
	tests := []struct {
		name       string
		url        string
		wantStatus string
		wantResp   string // response_status
		wantExcerp string
		wantErr    bool
		// queued is the delay range of the queued retry; zero for none.
		queuedMin, queuedMax time.Duration
	}{
		{name: "2xx succeeds", url: srv.URL + "/hook?status=201",
			wantStatus: "succeeded", wantResp: "201", wantExcerp: "answer 201"},
		{name: "5xx queues a retry on the schedule", url: srv.URL + "/hook?status=503",
			wantStatus: "failed", wantResp: "503", wantExcerp: "answer 503",
			queuedMin: time.Duration(float64(10*time.Minute) * (1 - jitter)), queuedMax: time.Duration(float64(10*time.Minute) * (1 + jitter))},
		{name: "Retry-After postpones the retry", url: srv.URL + "/hook?status=429&retry_after=3600",
			wantStatus: "failed", wantResp: "429", wantExcerp: "answer 429",
			queuedMin: time.Hour, queuedMax: time.Hour},
		{name: "an excerpt that is not text is stored as text", url: srv.URL + "/hook?status=200&binary",
			wantStatus: "succeeded", wantResp: "200", wantExcerp: "bad\uFFFDbytes"},
		{name: "connection refused queues a retry", url: downURL + "/hook",
			wantStatus: "failed", wantResp: "NULL", wantExcerp: "NULL", wantErr: true,
			queuedMin: time.Duration(float64(10*time.Minute) * (1 - jitter)), queuedMax: time.Duration(float64(10*time.Minute) * (1 + jitter))},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sub := insertSub(t, db, tc.url, true)
			r := request(sub, tc.url, fmt.Sprintf("evt_%d", i))
			r.Header = http.Header{
				"Authorization": {"Bearer secret-token"},
				"X-Api-Key":     {"k-123"},
				"Cookie":        {"session=1"},
				"X-Tenant":      {"acme"},
			}
			r.Key = []byte("0123456789abcdef01234567")
			// Done runs on the recorder's goroutine: what it reads from
			// another connection shows what was committed by then.
			type seen struct {
				attempts, queued int
				err              error
			}
			atDone := make(chan seen, 1)
			r.Done = func() {
				ctx, cancel := context.WithTimeout(context.Background(), pgWait)
				defer cancel()
				var s seen
				s.err = db.QueryRow(ctx, `SELECT (SELECT count(*) FROM walhook.attempts WHERE subscription_id = $1),
					(SELECT count(*) FROM walhook.deliveries WHERE subscription_id = $1)`, sub).Scan(&s.attempts, &s.queued)
				atDone <- s
			}
			before, start := dbNow(t, db), time.Now()
			submitAll(t, w, r)
			elapsed, after := time.Since(start), dbNow(t, db)

			s := <-atDone
			wantQueued := 0
			if tc.queuedMax > 0 {
				wantQueued = 1
			}
			if s.err != nil || s.attempts != 1 || s.queued != wantQueued {
				t.Fatalf("at Done: %d attempts, %d queued, %v; want 1, %d committed", s.attempts, s.queued, s.err, wantQueued)
			}

			ctx := context.Background()
			a, err := readAttempt(ctx, db, r.EventID)
			if err != nil {
				t.Fatalf("read attempt: %v", err)
			}
			if a.status != tc.wantStatus || ptrString(a.responseStatus) != tc.wantResp || ptrString(a.excerpt) != tc.wantExcerp {
				t.Fatalf("attempt = %s, %s, %q; want %s, %s, %q", a.status, ptrString(a.responseStatus), ptrString(a.excerpt),
					tc.wantStatus, tc.wantResp, tc.wantExcerp)
			}
			if (a.errMsg != nil) != tc.wantErr {
				t.Fatalf("attempt error = %s, want an error: %v", ptrString(a.errMsg), tc.wantErr)
			}
			if a.attempt != 1 || a.url != tc.url || a.method != http.MethodPost || string(a.body) != string(r.Body) {
				t.Fatalf("attempt request = #%d %s %s %q, want #1 POST %s %q", a.attempt, a.method, a.url, a.body, tc.url, r.Body)
			}
			if a.durationMS == nil || *a.durationMS < 0 || time.Duration(*a.durationMS)*time.Millisecond > elapsed {
				t.Fatalf("duration_ms = %s, want between 0 and %s", ptrString(a.durationMS), elapsed)
			}
			wantHeaders := map[string]string{"X-Tenant": "acme"}
			if !maps.Equal(a.headers, wantHeaders) {
				t.Fatalf("request_headers = %v, want %v (no credentials)", a.headers, wantHeaders)
			}

			q, err := readQueued(ctx, db, sub)
			if err != nil {
				t.Fatalf("read queue: %v", err)
			}
			if len(q) != wantQueued {
				t.Fatalf("queued rows = %d, want %d", len(q), wantQueued)
			}
			if wantQueued == 0 {
				return
			}
			d := q[0]
			if d.attempt != 1 || d.lockedBy != nil || d.url != tc.url || d.eventID != r.EventID || string(d.body) != string(r.Body) ||
				!maps.Equal(d.headers, wantHeaders) {
				t.Fatalf("queued row = %+v, want attempt 1, unlocked, the request without credentials", d)
			}
			// The delay is added to now() in the recording transaction,
			// which lies between before and after.
			lo, hi := before.Add(tc.queuedMin-time.Millisecond), after.Add(tc.queuedMax+time.Millisecond)
			if d.next.Before(lo) || d.next.After(hi) {
				t.Fatalf("next_attempt_at = %s, want in [%s, %s]", d.next, lo, hi)
			}
		})
	}
}

// TestRecorderHistoryRingBuffer: only the newest History attempts of a
// subscription are kept, whether they came in one batch or many, and other
// subscriptions keep theirs.
func TestRecorderHistoryRingBuffer(t *testing.T) {
	t.Parallel()
	db := newSchemaDB(t)
	w := startWorker(t, db, testPolicy) // History 3
	srv := newReceiver(t)
	url := srv.URL + "/hook"

	tests := []struct {
		name  string
		n     int
		burst bool // submit all at once rather than each after the last is recorded
	}{
		{name: "one by one", n: 5},
		{name: "in a burst", n: 7, burst: true},
		{name: "fewer than history", n: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sub := insertSub(t, db, url, true)
			var rs []*Request
			for i := range tc.n {
				rs = append(rs, request(sub, url, fmt.Sprintf("%s/%d", sub, i)))
			}
			if tc.burst {
				submitAll(t, w, rs...)
			} else {
				for _, r := range rs {
					submitAll(t, w, r)
				}
			}
			rows, err := db.Query(context.Background(), `SELECT event_id FROM walhook.attempts WHERE subscription_id = $1 ORDER BY id`, sub)
			if err != nil {
				t.Fatal(err)
			}
			got, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, r := range rs[max(0, tc.n-testPolicy.History):] {
				want = append(want, r.EventID)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("kept attempts = %q, want the newest %d: %q", got, testPolicy.History, want)
			}
		})
	}
}

// TestRecorderDeactivates: 410 deactivates a subscription at once and drops
// its queued deliveries; History failures in a row suspend it and keep
// them; a success in between starts the count afresh.
func TestRecorderDeactivates(t *testing.T) {
	t.Parallel()
	db := newSchemaDB(t)
	w := startWorker(t, db, testPolicy) // History 3
	srv := newReceiver(t)
	ctx := context.Background()

	tests := []struct {
		name     string
		statuses []int
		// queuedBefore rows are in the queue for the subscription first.
		queuedBefore int
		wantActive   bool
		wantMessage  string
		wantFailures int
		wantQueued   int
	}{
		{name: "410 deactivates and drops the queue", statuses: []int{410}, queuedBefore: 2,
			wantMessage: GoneMessage, wantFailures: 1, wantQueued: 0},
		{name: "history failures in a row suspend", statuses: []int{500, 500, 500}, queuedBefore: 1,
			wantMessage: SuspendedMessage, wantFailures: 3, wantQueued: 4},
		{name: "fewer failures than history", statuses: []int{500, 500},
			wantActive: true, wantFailures: 2, wantQueued: 2},
		{name: "a success starts the count afresh", statuses: []int{500, 500, 200, 500, 500},
			wantActive: true, wantFailures: 2, wantQueued: 4},
		{name: "a success clears the count", statuses: []int{500, 200},
			wantActive: true, wantFailures: 0, wantQueued: 1},
	}
	// A bystander's queued row shows that dropping is per subscription.
	bystander := insertSub(t, db, srv.URL+"/other", true)
	if _, err := db.Exec(ctx, `INSERT INTO walhook.deliveries (subscription_id, event_id, event, target_url, body, next_attempt_at)
		VALUES ($1, 'bystander', 'order.created', 'http://127.0.0.1:1/', '{}', now() + interval '1 hour')`, bystander); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sub := insertSub(t, db, srv.URL+"/hook", true)
			for i := range tc.queuedBefore {
				if _, err := db.Exec(ctx, `INSERT INTO walhook.deliveries (subscription_id, event_id, event, target_url, body, next_attempt_at)
					VALUES ($1, $2, 'order.created', 'http://127.0.0.1:1/', '{}', now() + interval '1 hour')`, sub, fmt.Sprintf("old-%d", i)); err != nil {
					t.Fatal(err)
				}
			}
			for i, status := range tc.statuses {
				url := fmt.Sprintf("%s/hook?status=%d", srv.URL, status)
				submitAll(t, w, request(sub, url, fmt.Sprintf("%s/%d", sub, i)))
			}
			var active bool
			var message *string
			var failures, queued int
			if err := db.QueryRow(ctx, `SELECT s.active, s.status_message,
					coalesce((SELECT consecutive_failures FROM walhook.subscription_failures f WHERE f.subscription_id = s.id), 0),
					(SELECT count(*) FROM walhook.deliveries d WHERE d.subscription_id = s.id)
				FROM walhook.subscriptions s WHERE s.id = $1`, sub).Scan(&active, &message, &failures, &queued); err != nil {
				t.Fatal(err)
			}
			wantMessage := "NULL"
			if tc.wantMessage != "" {
				wantMessage = tc.wantMessage
			}
			if active != tc.wantActive || ptrString(message) != wantMessage || failures != tc.wantFailures || queued != tc.wantQueued {
				t.Fatalf("subscription = active %v, %q, %d failures, %d queued; want %v, %q, %d, %d",
					active, ptrString(message), failures, queued, tc.wantActive, wantMessage, tc.wantFailures, tc.wantQueued)
			}
		})
	}
	var n int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM walhook.deliveries WHERE subscription_id = $1`, bystander).Scan(&n); err != nil || n != 1 {
		t.Fatalf("bystander's queued rows = %d, %v; want 1", n, err)
	}
}

// TestRecorderWriteErrorNamesStep: a failed write says which step failed
// and still carries the PostgreSQL error for errors.As. A trigger that
// raises makes the step fail on the server.
func TestRecorderWriteErrorNamesStep(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name        string
		table       string // the table whose trigger refuses the write
		copyRefused bool
		outcome     Outcome
		wantPrefix  string
	}{
		{name: "copy", table: "walhook.attempts", outcome: Outcome{Status: 204}, wantPrefix: "copy attempts: "},
		{name: "insert", table: "walhook.attempts", copyRefused: true, outcome: Outcome{Status: 204}, wantPrefix: "insert attempts: "},
		{name: "queue", table: "walhook.deliveries", outcome: Outcome{Status: 503}, wantPrefix: "queue 1 retries: "},
		{name: "count failures", table: "walhook.subscription_failures", outcome: Outcome{Status: 503}, wantPrefix: "count failures: "},
		{name: "deactivate", table: "walhook.subscriptions", outcome: Outcome{Status: 410}, wantPrefix: "deactivate gone subscriptions: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := newSchemaDB(t)
			sub := insertSub(t, db, "http://127.0.0.1:1/", true)
			for _, sql := range []string{
				`CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
				BEGIN RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'refused by the test'; END $$`,
				`CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON ` + tc.table + ` FOR EACH ROW EXECUTE FUNCTION public.refuse()`,
			} {
				if _, err := db.Exec(ctx, sql); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			rc := newRecorder(db, slog.New(slog.DiscardHandler))
			p := testPolicy.withDefaults()
			rc.policy.Store(&p)
			rc.copyRefused.Store(tc.copyRefused)
			err := rc.write(ctx, []record{{r: request(sub, "http://127.0.0.1:1/", "evt"), o: tc.outcome}})
			var pgErr *pgconn.PgError
			if err == nil || !strings.HasPrefix(err.Error(), tc.wantPrefix) || !errors.As(err, &pgErr) || pgErr.Code != "P0001" {
				t.Fatalf("write() = %v, want %q… wrapping the trigger's PgError P0001", err, tc.wantPrefix)
			}
			var n int
			if err := db.QueryRow(ctx, `SELECT (SELECT count(*) FROM walhook.attempts) + (SELECT count(*) FROM walhook.deliveries)`).Scan(&n); err != nil || n != 0 {
				t.Fatalf("rows left by the failed write = %d, %v; want none", n, err)
			}
		})
	}
}
