package walhook

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/e2e"
)

// orderedConfig is the demo config with fast retries and a dialect that
// orders by key.
func orderedConfig(t *testing.T) string {
	t.Helper()
	retry := "[0s" + strings.Repeat(", 20ms", 25) + "]"
	cfg := e2e.RetryConfig(t, retry, 1000)
	return strings.Replace(cfg, "dialects:\n", "dialects:\n  ordered:\n    ordering: key\n", 1)
}

// TestOrderingKeyRandomFailuresAndRestart: many updates of few rows, to a
// receiver that fails at random, with a hard stop and a restart halfway:
// per row, the events the receiver accepted, each counted the first time
// (a receiver deduplicates by webhook-id; a restart may send again what was
// not yet acknowledged), are every update of the row, in commit order.
func TestOrderingKeyRandomFailuresAndRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, orderedConfig(t))
	const rows, txs = 4, 160
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) SELECT g, 7, 0 FROM generate_series(1, $1) g`, rows)
	e.Subscribe("order.updated", "/ordered", "/", "ordered")

	var mu sync.Mutex
	rnd := rand.New(rand.NewPCG(7, 11))
	var accepted []string // webhook-ids, as accepted
	e.Recv.SetStatus(func(r *http.Request) int {
		mu.Lock()
		defer mu.Unlock()
		if rnd.Float64() < 0.3 {
			return http.StatusServiceUnavailable
		}
		accepted = append(accepted, r.Header.Get("webhook-id"))
		return http.StatusOK
	})

	// Every tenth transaction updates its row twice: two events of one
	// key in one transaction.
	update := func(i int) {
		id := i%rows + 1
		if i%10 == 0 {
			e.Exec(fmt.Sprintf(`BEGIN; UPDATE public.orders SET total = %[1]d WHERE id = %[2]d;
				UPDATE public.orders SET total = %[1]d + 0.5 WHERE id = %[2]d; COMMIT`, i, id))
			return
		}
		e.Exec(`UPDATE public.orders SET total = $1 WHERE id = $2`, i, id)
	}
	events := 0
	for i := 1; i <= txs; i++ {
		events++
		if i%10 == 0 {
			events++
		}
	}
	svc := e.start()
	for i := 1; i <= txs/2; i++ {
		update(i)
	}
	// A hard stop while events are in flight and queued behind failures.
	e2e.WaitFor(t, 30*time.Second, "some deliveries", func() bool { return len(e.Recv.Deliveries("/ordered")) > 20 })
	_ = svc.StopAndCancel(context.Background())
	e.svc.wg.Wait()
	e.svc = nil
	e.start()
	for i := txs/2 + 1; i <= txs; i++ {
		update(i)
	}

	// Each event's row and total, from its body.
	type ev struct {
		id    int
		total float64
	}
	byID := func() map[string]ev {
		out := map[string]ev{}
		for _, d := range e.Recv.Deliveries("/ordered") {
			var env struct {
				ID   string `json:"id"`
				Data struct {
					ID    int     `json:"id"`
					Total float64 `json:"total"`
				} `json:"data"`
			}
			if err := json.Unmarshal(d.Body, &env); err != nil {
				t.Fatalf("body %s: %v", d.Body, err)
			}
			out[env.ID] = ev{env.Data.ID, env.Data.Total}
		}
		return out
	}
	firstSeen := func() []string {
		mu.Lock()
		defer mu.Unlock()
		seen := map[string]bool{}
		var out []string
		for _, id := range accepted {
			if !seen[id] {
				seen[id] = true
				out = append(out, id)
			}
		}
		return out
	}
	e2e.WaitFor(t, 60*time.Second, fmt.Sprintf("%d distinct events accepted", events), func() bool {
		return len(firstSeen()) >= events && e.Count(`SELECT count(*) FROM walhook.deliveries`) == 0
	})

	bodies := byID()
	perRow := map[int][]float64{}
	for _, id := range firstSeen() {
		b, ok := bodies[id]
		if !ok {
			t.Fatalf("accepted event %s has no body", id)
		}
		perRow[b.id] = append(perRow[b.id], b.total)
	}
	for id := 1; id <= rows; id++ {
		var want []float64
		for i := 1; i <= txs; i++ {
			if i%rows+1 != id {
				continue
			}
			want = append(want, float64(i))
			if i%10 == 0 {
				want = append(want, float64(i)+0.5)
			}
		}
		if fmt.Sprint(perRow[id]) != fmt.Sprint(want) {
			t.Errorf("row %d: accepted totals %v, want %v (commit order)", id, perRow[id], want)
		}
	}
	mu.Lock()
	t.Logf("%d requests, %d accepted, %d distinct events", len(e.Recv.Deliveries("/ordered")), len(accepted), events)
	mu.Unlock()
}
