package deliver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook/mapping"
)

// envelopeBody is an envelope of about the size of a demo customer's.
func envelopeBody(id string) []byte {
	return []byte(`{"id":"` + id + `","event":"order.created","occurred_at":"2026-12-02T02:00:00.123456Z","site":"/acme/east",` +
		`"data":{"id":1234567,"tenant_id":7,"name":"Ada Lovelace","email":"ada@example.com","status":"active",` +
		`"created_at":"2026-12-02T01:59:59.5Z","total":"1234.50"}}`)
}

// TestBatchSplitsAtMaxBytes: a batch closes before an event that would take
// it past MaxBytes, and an event larger than MaxBytes goes alone; each
// member is done only once the batch carrying it is recorded.
func TestBatchSplitsAtMaxBytes(t *testing.T) {
	db := newSchemaDB(t)
	srv := newReceiver(t)
	sub := insertSub(t, db, srv.URL+"/hook", true)
	w := startWorker(t, db, RetryPolicy{Schedule: testPolicy.Schedule, History: 50})
	lim := &Batch{MaxEvents: 100, MaxWait: time.Minute, MaxBytes: 1024}
	var rs []*Request
	for i := range 6 {
		r := request(sub, srv.URL+"/hook", fmt.Sprintf("e%d", i))
		r.Body, r.Batch, r.Attempt = envelopeBody(r.EventID), lim, 1
		if i == 4 {
			r.Body = []byte(`{"id":"e4","big":"` + strings.Repeat("x", 2000) + `"}`)
		}
		rs = append(rs, r)
	}
	// submitAll waits for every member's Done; the batch still collecting
	// at the end goes out when the worker is drained, not after a minute.
	var drain conc.WaitGroup
	drain.Go(func() {
		submitAll(t, w, rs...)
	})
	wait := time.After(pgWait)
	for {
		var n int
		if err := db.QueryRow(context.Background(), `SELECT count(*) FROM walhook.attempts`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n >= 1 {
			break
		}
		select {
		case <-wait:
			t.Fatal("no batch recorded")
		case <-time.After(10 * time.Millisecond):
		}
	}
	w.batches.flushAll()
	drain.Wait()
	rows, err := db.Query(context.Background(), `SELECT event_ids, length(request_body) FROM walhook.attempts ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var ids []string
		var n int
		if err := rows.Scan(&ids, &n); err != nil {
			t.Fatal(err)
		}
		if n > lim.MaxBytes && len(ids) > 1 {
			t.Fatalf("batch %v is %d bytes, over MaxBytes %d", ids, n, lim.MaxBytes)
		}
		got = append(got, strings.Join(ids, ","))
	}
	if want := "e0,e1,e2|e3|e4|e5"; strings.Join(got, "|") != want {
		t.Fatalf("batches = %s, want %s", strings.Join(got, "|"), want)
	}
}

// BenchmarkWorkerEvents measures events delivered and recorded per second
// through a Worker with its PostgreSQL recorder, to a receiver on
// 127.0.0.1, one event per request and in batches of 100.
func BenchmarkWorkerEvents(b *testing.B) {
	db := newSchemaDB(b)
	srv := newReceiver(b)
	sub := insertSub(b, db, srv.URL+"/hook", true)
	for _, bc := range []struct {
		name  string
		batch *Batch
	}{
		{"unbatched", nil},
		{"batch100", &Batch{MaxEvents: 100, MaxWait: 200 * time.Millisecond, MaxBytes: 1 << 20}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			w := New(Config{AllowHTTP: true, AllowPrivate: true}, db, slog.New(slog.DiscardHandler))
			ctx, cancel := context.WithCancel(context.Background())
			var wg conc.WaitGroup
			wg.Go(func() { _ = w.Run(ctx) })
			defer func() { cancel(); wg.Wait() }()
			done := make(chan struct{}, 1024)
			b.ResetTimer()
			start := time.Now()
			var drain conc.WaitGroup
			drain.Go(func() {
				for range b.N {
					<-done
				}
			})
			for i := range b.N {
				id := fmt.Sprintf("ev-%d", i)
				r := &Request{SubscriptionID: sub, EventID: id, Event: "order.created", URL: srv.URL + "/hook",
					Method: http.MethodPost, Body: envelopeBody(id), Attempt: 1, Batch: bc.batch,
					Done: func() { done <- struct{}{} }}
				if err := w.Submit(ctx, r); err != nil {
					b.Fatal(err)
				}
			}
			w.Wait()
			drain.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
		})
	}
}

// TestBatchDrainSendsPartialBatch: a drain (Wait) sends a batch that is
// neither full nor due, and its members are done once it is recorded.
func TestBatchDrainSendsPartialBatch(t *testing.T) {
	db := newSchemaDB(t)
	srv := newReceiver(t)
	sub := insertSub(t, db, srv.URL+"/hook", true)
	w := startWorker(t, db, testPolicy)
	lim := &Batch{MaxEvents: 100, MaxWait: time.Minute, MaxBytes: 1 << 20}
	var done atomic.Int32
	for _, id := range []string{"a", "b"} {
		r := request(sub, srv.URL+"/hook", id)
		r.Body, r.Batch, r.Attempt = envelopeBody(id), lim, 1
		r.Done = func() { done.Add(1) }
		if err := w.Submit(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	if n := done.Load(); n != 0 {
		t.Fatalf("%d members done before their batch was sent", n)
	}
	w.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), pgWait)
	defer cancel()
	w.Flush(ctx)
	if n := done.Load(); n != 2 {
		t.Fatalf("%d members done after the drain, want 2", n)
	}
	var ids []string
	var event, eventID string
	if err := db.QueryRow(ctx, `SELECT event_ids, event, event_id FROM walhook.attempts`).Scan(&ids, &event, &eventID); err != nil {
		t.Fatal(err)
	}
	if strings.Join(ids, ",") != "a,b" || event != BatchEvent || eventID != BatchID([]string{"a", "b"}) {
		t.Fatalf("attempt = %s %s %v, want %s %s [a b]", eventID, event, ids, BatchID([]string{"a", "b"}), BatchEvent)
	}
}

// TestQueuedEventToBatchingDialect: one event queued for a batching dialect
// (as a released held delivery is) is sent as a batch of one.
func TestQueuedEventToBatchingDialect(t *testing.T) {
	ctx := context.Background()
	db := newSchemaDB(t)
	bodies := make(chan []byte, 1)
	ids := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		bodies <- body
		ids <- r.Header.Get("webhook-id")
	}))
	t.Cleanup(srv.Close)
	sub := insertSub(t, db, srv.URL+"/hook", true)
	w := startWorker(t, db, testPolicy)
	bulk := &Dialect{Name: "bulk", Body: mapping.BodyEnvelope, Method: http.MethodPost, Header: http.Header{},
		Batch: &Batch{MaxEvents: 10, MaxWait: time.Minute, MaxBytes: 1 << 20}}
	runQueue(t, db, w, map[string]*Dialect{"bulk": bulk})
	r := request(sub, srv.URL+"/hook", "e1")
	r.Dialect, r.Body = "bulk", envelopeBody("e1")
	if err := Enqueue(ctx, db, []*Request{r}); err != nil {
		t.Fatal(err)
	}
	select {
	case body := <-bodies:
		id := BatchID([]string{"e1"})
		if want := `{"id":"` + id + `","events":[` + string(envelopeBody("e1")) + `]}`; string(body) != want {
			t.Fatalf("body = %s, want %s", body, want)
		}
		if got := <-ids; got != id {
			t.Fatalf("webhook-id = %s, want %s", got, id)
		}
	case <-time.After(pgWait):
		t.Fatal("the queued event was not sent")
	}
}
