package deliver

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sourcegraph/conc"
)

// newTestQueue returns a Queue named name on db; its worker is not run, as
// these tests only claim.
func newTestQueue(db *pgxpool.Pool, name string, lease time.Duration, batch int) *Queue {
	w := New(Config{AllowHTTP: true, AllowPrivate: true}, db, slog.New(slog.DiscardHandler))
	return NewQueue(QueueConfig{Name: name, Lease: lease, ClaimBatch: batch, Retry: testPolicy}, db, w, slog.New(slog.DiscardHandler))
}

// enqueue adds n rows for sub due at the SQL expression at, as a claimer
// that is gone left them, and returns their ids in order.
func enqueue(tb testing.TB, db *pgxpool.Pool, sub string, n int, at string) []int64 {
	tb.Helper()
	rows, err := db.Query(context.Background(), `INSERT INTO walhook.deliveries (subscription_id, event_id, event, target_url, body, next_attempt_at, locked_by)
		SELECT $1, 'evt_' || i, 'order.created', 'http://127.0.0.1:1/', '{}', `+at+`, 'a previous claimer'
		FROM generate_series(1, $2) AS i
		RETURNING id`, sub, n)
	if err != nil {
		tb.Fatalf("enqueue: %v", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		tb.Fatalf("enqueue: %v", err)
	}
	slices.Sort(ids)
	return ids
}

// claimedIDs returns the ids of a claim, sorted: a claim returns rows in
// no particular order.
func claimedIDs(batch []queued) []int64 {
	ids := make([]int64, len(batch))
	for i, d := range batch {
		ids[i] = d.id
	}
	slices.Sort(ids)
	return ids
}

// lockedBy maps each queued row to its locked_by ("" for NULL).
func lockedBy(tb testing.TB, db *pgxpool.Pool) map[int64]string {
	tb.Helper()
	rows, err := db.Query(context.Background(), `SELECT id, coalesce(locked_by, '') FROM walhook.deliveries`)
	if err != nil {
		tb.Fatal(err)
	}
	out := map[int64]string{}
	var id int64
	var by string
	if _, err := pgx.ForEachRow(rows, []any{&id, &by}, func() error { out[id] = by; return nil }); err != nil {
		tb.Fatal(err)
	}
	return out
}

// TestQueueConcurrentClaimersShareRows: two processes claiming the same due
// rows at once never both claim one row, and between them claim them all.
func TestQueueConcurrentClaimersShareRows(t *testing.T) {
	t.Parallel()
	db := newSchemaDB(t)
	sub := insertSub(t, db, "http://127.0.0.1:1/", true)
	const n, batch = 300, 20
	all := enqueue(t, db, sub, n, "now()")

	names := []string{"process-a", "process-b"}
	got := make([][]int64, len(names))
	errs := make([]error, len(names))
	start := make(chan struct{})
	var wg conc.WaitGroup
	for i, name := range names {
		q := newTestQueue(db, name, time.Hour, batch)
		wg.Go(func() {
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), pgWait)
			defer cancel()
			// Bounded: n rows cannot take more than n claims that find any.
			for range n {
				b, err := q.claim(ctx, q.cfg.ClaimBatch)
				if err != nil {
					errs[i] = err
					return
				}
				if len(b) == 0 {
					return
				}
				got[i] = append(got[i], claimedIDs(b)...)
			}
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s: claim() = %v", names[i], err)
		}
	}
	t.Logf("claimed %d and %d rows", len(got[0]), len(got[1]))

	owner := map[int64]string{}
	for i, ids := range got {
		for _, id := range ids {
			if prev, ok := owner[id]; ok {
				t.Fatalf("row %d claimed by %s and %s", id, prev, names[i])
			}
			owner[id] = names[i]
		}
	}
	union := append(slices.Clone(got[0]), got[1]...)
	slices.Sort(union)
	if !slices.Equal(union, all) {
		t.Fatalf("claimed %d distinct rows, want all %d", len(union), len(all))
	}
	for id, by := range lockedBy(t, db) {
		if by != owner[id] {
			t.Fatalf("row %d locked_by = %q, want its claimer %q", id, by, owner[id])
		}
	}
}

// TestQueueClaimSkipsLockedRows: rows another claimer holds locked are
// skipped, not waited for, and are claimable once released.
func TestQueueClaimSkipsLockedRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := newSchemaDB(t)
	sub := insertSub(t, db, "http://127.0.0.1:1/", true)
	ids := enqueue(t, db, sub, 10, "now()")
	held, free := ids[:4], ids[4:]

	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT id FROM walhook.deliveries WHERE id = ANY($1) FOR UPDATE`, held); err != nil {
		t.Fatal(err)
	}

	q := newTestQueue(db, "claimer", time.Hour, 100)
	cctx, cancel := context.WithTimeout(ctx, pgWait)
	defer cancel()
	b, err := q.claim(cctx, q.cfg.ClaimBatch)
	if err != nil {
		t.Fatalf("claim() with rows locked elsewhere = %v", err)
	}
	if got := claimedIDs(b); !slices.Equal(got, free) {
		t.Fatalf("claim() = %v, want the unlocked rows %v", got, free)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	b, err = q.claim(cctx, q.cfg.ClaimBatch)
	if err != nil {
		t.Fatalf("claim() after release = %v", err)
	}
	if got := claimedIDs(b); !slices.Equal(got, held) {
		t.Fatalf("claim() after release = %v, want %v", got, held)
	}
}

// TestQueueLease: a claimed row is hidden from every claimer until its lease
// lapses, and is claimed again after.
func TestQueueLease(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := newSchemaDB(t)
	sub := insertSub(t, db, "http://127.0.0.1:1/", true)
	ids := enqueue(t, db, sub, 1, "now()")
	const lease = 3 * time.Second
	a := newTestQueue(db, "process-a", lease, 10)
	b := newTestQueue(db, "process-b", lease, 10)

	claimedAt := dbNow(t, db)
	got, err := a.claim(ctx, a.cfg.ClaimBatch)
	if err != nil || !slices.Equal(claimedIDs(got), ids) {
		t.Fatalf("first claim() = %v, %v; want %v", claimedIDs(got), err, ids)
	}
	var until time.Time
	if err := db.QueryRow(ctx, `SELECT next_attempt_at FROM walhook.deliveries WHERE id = $1`, ids[0]).Scan(&until); err != nil {
		t.Fatal(err)
	}
	if d := until.Sub(claimedAt); d < lease || d > lease+pgWait {
		t.Fatalf("leased until %s after the claim, want %s", d, lease)
	}

	for _, q := range []*Queue{a, b} {
		before := dbNow(t, db)
		got, err := q.claim(ctx, q.cfg.ClaimBatch)
		if err != nil {
			t.Fatalf("%s: claim() during the lease = %v", q.cfg.Name, err)
		}
		if len(got) > 0 && before.Before(until) {
			t.Fatalf("%s: claim() at %s = %v, before the lease ends at %s", q.cfg.Name, before, claimedIDs(got), until)
		}
	}

	deadline := time.Now().Add(pgWait)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		got, err := b.claim(ctx, b.cfg.ClaimBatch)
		if err != nil {
			t.Fatalf("claim() = %v", err)
		}
		if len(got) > 0 {
			if now := dbNow(t, db); now.Before(until) {
				t.Fatalf("row claimed again at %s, before its lease ends at %s", now, until)
			}
			if !slices.Equal(claimedIDs(got), ids) {
				t.Fatalf("claim() after the lease = %v, want %v", claimedIDs(got), ids)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("row not claimable within %s of a %s lease", pgWait, lease)
		}
		<-tick.C
	}
	if by := lockedBy(t, db)[ids[0]]; by != "process-b" {
		t.Fatalf("locked_by = %q, want process-b", by)
	}
}

// TestQueueClaimParksAndDrops: a claim takes only due rows of active
// subscriptions; due rows of an inactive one are parked at 'infinity' until
// activate(), those of a removed one dropped; rows not yet due are left be.
func TestQueueClaimParksAndDrops(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := newSchemaDB(t)
	active := insertSub(t, db, "http://127.0.0.1:1/", true)
	inactive := insertSub(t, db, "http://127.0.0.1:1/", false)
	removed := "00000000-0000-4000-8000-000000000001"

	const (
		claimed = "claimed"
		parked  = "parked"
		dropped = "dropped"
		waiting = "waiting"
	)
	tests := []struct {
		name string
		sub  string
		at   string
		want string
	}{
		{name: "due, active", sub: active, at: "now()", want: claimed},
		{name: "due, inactive", sub: inactive, at: "now()", want: parked},
		{name: "not due, inactive", sub: inactive, at: "now() + interval '1 hour'", want: waiting},
		{name: "due, removed", sub: removed, at: "now()", want: dropped},
		{name: "not due, removed", sub: removed, at: "now() + interval '1 hour'", want: waiting},
	}
	ids := make([]int64, len(tests))
	for i, tc := range tests {
		ids[i] = enqueue(t, db, tc.sub, 1, tc.at)[0]
	}
	q := newTestQueue(db, "claimer", time.Hour, 100)
	got, err := q.claim(ctx, q.cfg.ClaimBatch)
	if err != nil {
		t.Fatalf("claim() = %v", err)
	}
	claimedSet := claimedIDs(got)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var state string
			err := db.QueryRow(ctx, `SELECT CASE
					WHEN next_attempt_at = 'infinity' AND locked_by IS NULL THEN 'parked'
					WHEN locked_by = 'claimer' THEN 'claimed'
					WHEN next_attempt_at > now() + interval '50 minutes' AND locked_by = 'a previous claimer' THEN 'waiting'
					ELSE 'other: ' || next_attempt_at::text || ' ' || coalesce(locked_by, 'NULL') END
				FROM walhook.deliveries WHERE id = $1`, ids[i]).Scan(&state)
			if errors.Is(err, pgx.ErrNoRows) {
				state = dropped
			} else if err != nil {
				t.Fatal(err)
			}
			if state != tc.want {
				t.Fatalf("row after claim() is %s, want %s", state, tc.want)
			}
			if inClaim := slices.Contains(claimedSet, ids[i]); inClaim != (tc.want == claimed) {
				t.Fatalf("row in claim() result: %v, want %v", inClaim, tc.want == claimed)
			}
		})
	}

	var ok bool
	if err := db.QueryRow(ctx, `SELECT walhook.activate($1)`, inactive).Scan(&ok); err != nil || !ok {
		t.Fatalf("activate() = %v, %v", ok, err)
	}
	got, err = q.claim(ctx, q.cfg.ClaimBatch)
	if err != nil {
		t.Fatalf("claim() after activate() = %v", err)
	}
	if want := []int64{ids[1]}; !slices.Equal(claimedIDs(got), want) {
		t.Fatalf("claim() after activate() = %v, want the parked row %v", claimedIDs(got), want)
	}
	if d := got[0]; d.sub != inactive || d.eventID != "evt_1" || d.url != "http://127.0.0.1:1/" || string(d.body) != "{}" {
		t.Fatalf("claimed row = %+v, want the parked delivery", d)
	}
}

// TestQueueSendsDueDeliveries: a running Queue sends what is due, signed
// with the subscription's secret, as attempt number attempts-so-far + 1;
// then the row is deleted when the delivery succeeded or the schedule is
// used up, and otherwise rescheduled, unlocked, for the schedule's delay.
func TestQueueSendsDueDeliveries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := newSchemaDB(t)
	key := []byte("0123456789abcdef01234567")
	secret := "whsec_" + base64.StdEncoding.EncodeToString(key)

	var signed sync.Map // event id → whether the signature verified
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		id := r.Header.Get("webhook-id")
		ts, _ := strconv.ParseInt(r.Header.Get("webhook-timestamp"), 10, 64)
		signed.Store(id, r.Header.Get("webhook-signature") == Sign(key, id, ts, body))
		status, _ := strconv.Atoi(r.URL.Query().Get("status"))
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)

	w := startWorker(t, db, testPolicy) // schedule of 3 attempts
	runQueue(t, db, w, nil)

	tests := []struct {
		name         string
		status       int
		madeBefore   int // attempts already made
		wantKept     bool
		wantDelayMin time.Duration // of a kept row
		wantDelayMax time.Duration
	}{
		{name: "success deletes the row", status: 204, madeBefore: 1},
		{name: "failure reschedules", status: 500, madeBefore: 1, wantKept: true,
			wantDelayMin: time.Duration(float64(time.Hour) * (1 - DefaultJitter)), wantDelayMax: time.Duration(float64(time.Hour) * (1 + DefaultJitter))},
		{name: "failure of the last attempt deletes the row", status: 500, madeBefore: 2},
		{name: "a row with no attempt yet, as redeliver() queues it", status: 200, madeBefore: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			url := fmt.Sprintf("%s/hook?status=%d", srv.URL, tc.status)
			var sub string
			if err := db.QueryRow(ctx, `INSERT INTO walhook.subscriptions (owner, event, target_url, secret)
				VALUES ('acme', 'order.created', $1, $2) RETURNING id::text`, url, secret).Scan(&sub); err != nil {
				t.Fatal(err)
			}
			eventID := "evt_" + sub
			var id int64
			if err := db.QueryRow(ctx, `INSERT INTO walhook.deliveries (subscription_id, event_id, event, target_url, body, attempt)
				VALUES ($1, $2, 'order.created', $3, '{"queued":true}', $4) RETURNING id`, sub, eventID, url, tc.madeBefore).Scan(&id); err != nil {
				t.Fatal(err)
			}
			before := dbNow(t, db)
			var attempt int
			deadline := time.Now().Add(pgWait)
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				err := db.QueryRow(ctx, `SELECT attempt FROM walhook.attempts WHERE event_id = $1`, eventID).Scan(&attempt)
				if err == nil {
					break
				}
				if !errors.Is(err, pgx.ErrNoRows) {
					t.Fatal(err)
				}
				if time.Now().After(deadline) {
					t.Fatalf("no attempt recorded within %s", pgWait)
				}
				<-tick.C
			}
			after := dbNow(t, db)
			if attempt != tc.madeBefore+1 {
				t.Fatalf("recorded attempt #%d, want #%d", attempt, tc.madeBefore+1)
			}
			if ok, _ := signed.Load(eventID); ok != true {
				t.Fatalf("signature verified: %v, want true", ok)
			}
			rows, err := readQueued(ctx, db, sub)
			if err != nil {
				t.Fatal(err)
			}
			if kept := len(rows) == 1; kept != tc.wantKept || len(rows) > 1 {
				t.Fatalf("queued rows after the attempt = %d, want kept: %v", len(rows), tc.wantKept)
			}
			if !tc.wantKept {
				return
			}
			d := rows[0]
			lo, hi := before.Add(tc.wantDelayMin-time.Millisecond), after.Add(tc.wantDelayMax+time.Millisecond)
			if d.attempt != tc.madeBefore+1 || d.lockedBy != nil || d.next.Before(lo) || d.next.After(hi) {
				t.Fatalf("rescheduled row = attempt %d, locked_by %s, due %s; want %d, NULL, in [%s, %s]",
					d.attempt, ptrString(d.lockedBy), d.next, tc.madeBefore+1, lo, hi)
			}
		})
	}
}

// runQueue runs a Queue polling every 20ms, sending through w with the
// given dialects, until the test ends.
func runQueue(tb testing.TB, db *pgxpool.Pool, w *Worker, dialects map[string]*Dialect) {
	tb.Helper()
	q := NewQueue(QueueConfig{Name: "sender", PollInterval: 20 * time.Millisecond, Retry: testPolicy, Dialects: dialects},
		db, w, slog.New(slog.DiscardHandler))
	ctx := context.Background()
	stop, cancel := context.WithCancel(ctx)
	var wg conc.WaitGroup
	wg.Go(func() { _ = q.Run(stop, ctx) })
	tb.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}
