package walhook

import (
	"context"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/internal/e2e"
)

// TestSpillToStandbys: with standbys sharing the database, first attempts
// the leader cannot start soon go to the shared queue, the standbys send
// them, and a leader killed while work sits there loses none of it.
func TestSpillToStandbys(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Subscribe("customer.created", "/slow")
	e.Recv.SetStatus(func(*http.Request) int {
		time.Sleep(20 * time.Millisecond) // a slow receiver
		return http.StatusOK
	})
	// A short lease: what the killed leader had claimed comes due again
	// within the test's patience, as it would after the default lease.
	shortLease := func(s *Service) { s.hooks.queue = func(c *deliver.QueueConfig) { c.Lease = 2 * time.Second } }
	lead := e.newService()
	shortLease(lead)
	e.run(lead)
	waitLeading(t, lead)
	var standbys []*Service
	var wg conc.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	for range 2 {
		sb := e.newService()
		shortLease(sb)
		standbys = append(standbys, sb)
		wg.Go(func() { _ = sb.Run(ctx) })
	}
	e2e.WaitFor(t, 30*time.Second, "the leader to see its standbys", func() bool { return lead.peers.Load() == 2 })

	const rows = 600
	e.Exec(`INSERT INTO public.customers (tenant_id, name) SELECT 7, 'c' || g FROM generate_series(1, $1) g`, rows)
	queued := func(s *Service) float64 {
		return testutil.ToFloat64(s.metrics.Deliveries.WithLabelValues(deliver.OutcomeQueued))
	}
	sent := func(s *Service) float64 {
		return testutil.ToFloat64(s.metrics.Deliveries.WithLabelValues(deliver.OutcomeSucceeded))
	}
	e2e.WaitFor(t, 30*time.Second, "spilled deliveries sent by standbys while more wait in the queue", func() bool {
		return queued(lead) > 0 && sent(standbys[0])+sent(standbys[1]) > 0 && e.Count(`SELECT count(*) FROM walhook.deliveries`) > 0
	})
	t.Logf("leader spilled %.0f; standbys sent %.0f and %.0f; %d in the queue at the kill", queued(lead),
		sent(standbys[0]), sent(standbys[1]), e.Count(`SELECT count(*) FROM walhook.deliveries`))
	_ = lead.StopAndCancel(context.Background())
	e.svc.wg.Wait()
	e.svc = nil

	ids := make([]float64, rows)
	for i := range ids {
		ids[i] = float64(i + 1)
	}
	e.Recv.WaitRows(t, "/slow", ids...)
	e2e.WaitFor(t, 30*time.Second, "the queue to empty", func() bool {
		return e.Count(`SELECT count(*) FROM walhook.deliveries`) == 0
	})
}

// TestSpillRate measures, with WALHOOK_SPILL_BENCH=<events> (it skips
// without), events/s to a receiver that takes 50 ms per request, with one
// process and with a leader and two standbys sharing the work.
func TestSpillRate(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("WALHOOK_SPILL_BENCH"))
	if n <= 0 {
		t.Skip("set WALHOOK_SPILL_BENCH=<events> to measure delivery over processes")
	}
	for _, procs := range []int{1, 3} {
		e := newEnv(t, "")
		e.Subscribe("customer.created", "/slow")
		var got atomic.Int64
		e.Recv.SetStatus(func(*http.Request) int {
			time.Sleep(50 * time.Millisecond)
			got.Add(1)
			return http.StatusOK
		})
		lead := e.start()
		waitLeading(t, lead)
		ctx, cancel := context.WithCancel(context.Background())
		var wg conc.WaitGroup
		for range procs - 1 {
			sb := e.newService()
			wg.Go(func() { _ = sb.Run(ctx) })
		}
		e2e.WaitFor(t, 30*time.Second, "the leader to see its standbys", func() bool { return lead.peers.Load() == int64(procs-1) })
		start := time.Now()
		e.Exec(`INSERT INTO public.customers (tenant_id, name) SELECT 7, 'c' || g FROM generate_series(1, $1) g`, n)
		e2e.WaitFor(t, 30*time.Minute, "every event", func() bool { return got.Load() >= int64(n) })
		el := time.Since(start)
		t.Logf("%d process(es), receiver 50 ms per request, max_per_host 16: %d events in %s, %.0f events/s",
			procs, n, el.Round(time.Millisecond), float64(n)/el.Seconds())
		e.stop()
		cancel()
		wg.Wait()
	}
}

// waitLeading waits until svc leads and streams.
func waitLeading(t *testing.T, svc *Service) {
	t.Helper()
	e2e.WaitFor(t, 30*time.Second, "a streaming leader", func() bool {
		h := svc.Health()
		return h.Role == RoleLeader && h.Streaming
	})
}
