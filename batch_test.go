package walhook

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/jackc/pglogrepl"

	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/internal/e2e"
)

// batchConfig is the demo config with retries a test can wait for and a
// bulk dialect batching up to maxEvents events, waiting at most maxWait.
func batchConfig(t *testing.T, maxEvents int, maxWait string) string {
	t.Helper()
	cfg := e2e.RetryConfig(t, "[0s, 200ms, 200ms]", 10)
	return strings.Replace(cfg, "dialects:\n", "dialects:\n  bulk:\n    batch: {max_events: "+
		strconv.Itoa(maxEvents)+", max_wait: "+maxWait+"}\n", 1)
}

// batchDoc is a batch request's body.
type batchDoc struct {
	ID     string `json:"id"`
	Events []struct {
		ID   string         `json:"id"`
		Data map[string]any `json:"data"`
	} `json:"events"`
}

func decodeBatch(t *testing.T, d e2e.Delivery) batchDoc {
	t.Helper()
	var b batchDoc
	if err := json.Unmarshal(d.Body, &b); err != nil {
		t.Fatalf("batch body %s: %v", d.Body, err)
	}
	return b
}

func (b batchDoc) eventIDs() []string {
	var out []string
	for _, ev := range b.Events {
		out = append(out, ev.ID)
	}
	return out
}

func (b batchDoc) rows() []float64 {
	var out []float64
	for _, ev := range b.Events {
		id, _ := ev.Data["id"].(float64)
		out = append(out, id)
	}
	return out
}

// batchAttempts returns the attempts of sub as (event_id, event, event_ids).
func batchAttempts(t *testing.T, e *env, sub string) (ids []string, events []string, eventIDs [][]string) {
	t.Helper()
	rows, err := e.Conn.Query(context.Background(), `SELECT event_id, event, coalesce(event_ids, '{}')
		FROM walhook.attempts WHERE subscription_id = $1 ORDER BY id`, sub)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, ev string
		var evIDs []string
		if err := rows.Scan(&id, &ev, &evIDs); err != nil {
			t.Fatal(err)
		}
		ids, events, eventIDs = append(ids, id), append(events, ev), append(eventIDs, evIDs)
	}
	return ids, events, eventIDs
}

// TestBatchIsOneSignedRequest: five events of one transaction to a batching
// subscription arrive as one request whose events are in commit order, whose
// id is the batch id derived from the event ids, signed over the whole body,
// and recorded as one attempt with the ids of its events.
func TestBatchIsOneSignedRequest(t *testing.T) {
	t.Parallel()
	e := newEnv(t, batchConfig(t, 5, "60s"))
	sub := e.Subscribe("customer.created", "/bulk", "/", "bulk", "generate")
	var secret string
	if err := e.Conn.QueryRow(context.Background(), `SELECT secret FROM walhook.subscriptions WHERE id = $1`, sub).Scan(&secret); err != nil {
		t.Fatal(err)
	}
	e.start()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) SELECT g, 7, 'c' || g FROM generate_series(1, 5) g`)

	d := e.Recv.Wait(t, "/bulk", 1)[0]
	b := decodeBatch(t, d)
	if got, want := b.rows(), []float64{1, 2, 3, 4, 5}; !slices.Equal(got, want) {
		t.Fatalf("batch rows = %v, want %v in commit order", got, want)
	}
	ids := b.eventIDs()
	if b.ID != deliver.BatchID(ids) || d.Header.Get("webhook-id") != b.ID {
		t.Fatalf("batch id %q, webhook-id %q, want BatchID(%v) = %q", b.ID, d.Header.Get("webhook-id"), ids, deliver.BatchID(ids))
	}
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := wh.Verify(d.Body, d.Header); err != nil {
		t.Fatalf("the reference library rejects the batch's signature: %v", err)
	}
	e2e.WaitFor(t, 10*time.Second, "the batch's attempt", func() bool { return len(e.Attempts(sub)) == 1 })
	aIDs, aEvents, aEventIDs := batchAttempts(t, e, sub)
	if aIDs[0] != b.ID || aEvents[0] != deliver.BatchEvent || !slices.Equal(aEventIDs[0], ids) {
		t.Fatalf("attempt = %s %s %v, want %s %s %v", aIDs[0], aEvents[0], aEventIDs[0], b.ID, deliver.BatchEvent, ids)
	}
	if n := len(e.Recv.Deliveries("/bulk")); n != 1 {
		t.Fatalf("receiver got %d requests, want 1", n)
	}
}

// TestBatchRetriedAsWhole: a failing receiver gets the same batch again,
// same webhook-id and same events, and every attempt records its events.
func TestBatchRetriedAsWhole(t *testing.T) {
	t.Parallel()
	e := newEnv(t, batchConfig(t, 3, "60s"))
	sub := e.Subscribe("customer.created", "/bulk", "/", "bulk")
	e.Recv.SetStatus(e2e.FailFirst(2))
	e.start()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) SELECT g, 7, 'c' || g FROM generate_series(1, 3) g`)

	got := e.Recv.Wait(t, "/bulk", 3)
	first := decodeBatch(t, got[0])
	for i, d := range got {
		b := decodeBatch(t, d)
		if d.Header.Get("webhook-id") != first.ID || b.ID != first.ID || !slices.Equal(b.eventIDs(), first.eventIDs()) {
			t.Fatalf("request %d is batch %s with %v, want batch %s with %v", i, b.ID, b.eventIDs(), first.ID, first.eventIDs())
		}
	}
	e2e.WaitFor(t, 10*time.Second, "the queue to empty", func() bool {
		return e.Count(`SELECT count(*) FROM walhook.deliveries`) == 0 && len(e.Attempts(sub)) == 3
	})
	a := e.Attempts(sub)
	_, _, eventIDs := batchAttempts(t, e, sub)
	for i, want := range []string{"failed", "failed", "succeeded"} {
		if a[i].Status != want || a[i].Attempt != i+1 || a[i].EventID != first.ID || !slices.Equal(eventIDs[i], first.eventIDs()) {
			t.Fatalf("attempt %d = %+v with %v, want %s attempt %d of %s with %v", i, a[i], eventIDs[i], want, i+1, first.ID, first.eventIDs())
		}
	}
}

// TestBatchKilledMidBatchLosesNothing: events collecting in a batch are not
// acknowledged; a hard stop then leaves them to be replayed, and the batch
// they form after the restart has the id the same events always make.
func TestBatchKilledMidBatchLosesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, batchConfig(t, 3, "60s"))
	e.Subscribe("customer.created", "/bulk", "/", "bulk")
	e.Subscribe("customer.created", "/single", "/", "default")
	svc := e.start()
	e2e.WaitFor(t, 30*time.Second, "the service to stream", func() bool { return svc.Health().Ready })
	// beforeCommit is inside the transaction, before its commit record: a
	// slot confirmed past it has acknowledged the transaction.
	ctx := context.Background()
	tx, err := e.Conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var beforeCommit pglogrepl.LSN
	var s string
	if _, err := tx.Exec(ctx, `INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'a'), (2, 7, 'b')`); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	if beforeCommit, err = pglogrepl.ParseLSN(s); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// The unbatched subscription's deliveries show the transaction was read
	// and fanned out, to the batch too.
	e.Recv.WaitRows(t, "/single", 1, 2)
	_ = svc.StopAndCancel(context.Background())
	e.svc.wg.Wait()
	e.svc = nil
	if n := len(e.Recv.Deliveries("/bulk")); n != 0 {
		t.Fatalf("receiver got %d requests before the batch was full, want 0", n)
	}
	if c := e.Confirmed(); c > beforeCommit {
		t.Fatalf("confirmed %s past the batched transaction (before its commit: %s) with the batch unsent: its events would be lost", c, beforeCommit)
	}

	e.start()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (3, 7, 'c')`)
	d := e.Recv.Wait(t, "/bulk", 1)[0]
	b := decodeBatch(t, d)
	if got, want := b.rows(), []float64{1, 2, 3}; !slices.Equal(got, want) {
		t.Fatalf("batch after restart has rows %v, want %v", got, want)
	}
	if b.ID != deliver.BatchID(b.eventIDs()) {
		t.Fatalf("batch id %s, want %s", b.ID, deliver.BatchID(b.eventIDs()))
	}
}

// TestBatchBacklogCatchUp: a backlog in transactions of 100 rows reaches a
// batching subscription whole, each batch in commit order and batches in
// the order of their first event, and says how fast, in events per second,
// against the same backlog one event per request. WALHOOK_BATCH_ROWS sets
// the backlog (default 2000) for a measurement.
func TestBatchBacklogCatchUp(t *testing.T) {
	t.Parallel()
	rows := 2000
	if v := os.Getenv("WALHOOK_BATCH_ROWS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 {
			t.Fatalf("WALHOOK_BATCH_ROWS = %q, want a number of at least 100", v)
		}
		rows = n / 100 * 100
	}
	var rates []string
	for _, dialect := range []string{"default", "bulk"} {
		e := newEnv(t, batchConfig(t, 100, "200ms"))
		e.Subscribe("customer.created", "/c", "/", dialect)
		for i := 0; i < rows; i += 100 {
			e.Exec(`INSERT INTO public.customers (id, tenant_id, name) SELECT g, 7, 'c' || g FROM generate_series($1::int, $2::int) g`, i+1, i+100)
		}
		start := time.Now()
		e.start()
		var got []float64
		seen := 0
		e2e.WaitFor(t, 5*time.Minute, "the backlog", func() bool {
			ds := e.Recv.Deliveries("/c")
			for _, d := range ds[seen:] {
				if dialect == "default" {
					id, _ := d.Envelope(t)["data"].(map[string]any)["id"].(float64)
					got = append(got, id)
					continue
				}
				got = append(got, decodeBatch(t, d).rows()...)
			}
			seen = len(ds)
			return len(got) >= rows
		})
		elapsed := time.Since(start)
		e.stop()
		requests := len(e.Recv.Deliveries("/c"))
		if dialect == "bulk" {
			// Batches are sent in order, up to max_per_host at a time, so they
			// may arrive out of order; within each, rows are in commit order.
			for _, d := range e.Recv.Deliveries("/c") {
				r := decodeBatch(t, d).rows()
				if !slices.IsSorted(r) {
					t.Fatalf("batch rows %v out of commit order", r)
				}
			}
		}
		slices.Sort(got)
		got = slices.Compact(got)
		if len(got) != rows || got[0] != 1 || got[len(got)-1] != float64(rows) {
			t.Fatalf("%s: %d distinct rows from %v to %v, want 1..%d", dialect, len(got), got[0], got[len(got)-1], rows)
		}
		rates = append(rates, fmt.Sprintf("%s: %d events in %d requests, %.0f events/s", dialect, rows, requests, float64(rows)/elapsed.Seconds()))
	}
	t.Logf("catch-up from start (service start included): %s", strings.Join(rates, "; "))
}
