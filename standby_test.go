package walhook

import (
	"context"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/e2e"
)

// TestStandbyWorksTheRetryQueue: while another process leads the slot, a
// standby delivers what waits in the retry queue.
func TestStandbyWorksTheRetryQueue(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	id := e.Subscribe("customer.created", "/q")
	// The test's own session holds the leader lock, so the service below
	// stands by.
	var got bool
	if err := e.Conn.QueryRow(context.Background(), `SELECT pg_try_advisory_lock($1)`, leaderLockKey(e.Slot)).Scan(&got); err != nil || !got {
		t.Fatalf("take the leader lock: %v, %v", got, err)
	}
	e.start()
	e.Exec(`INSERT INTO walhook.deliveries (subscription_id, event_id, event, target_url, body)
		VALUES ($1, 'evt-standby', 'customer.created', $2, '{"queued":true}')`, id, e.Recv.URL+"/q")
	d := e.Recv.Wait(t, "/q", 1)[0]
	if d.Header.Get("webhook-id") != "evt-standby" || string(d.Body) != `{"queued":true}` {
		t.Fatalf("standby delivered %s %s, want the queued request", d.Header.Get("webhook-id"), d.Body)
	}
	e2e.WaitFor(t, 10*time.Second, "the queue row to be finished", func() bool {
		var n int
		err := e.Conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.deliveries`).Scan(&n)
		return err == nil && n == 0
	})
}
