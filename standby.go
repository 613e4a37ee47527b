package walhook

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/internal/stage"
)

// standby is what a process does while another leads the slot: it works
// the retry queue, which any number of processes may share (rows are
// claimed with FOR UPDATE SKIP LOCKED), so standbys add delivery capacity
// instead of idling.
type standby struct {
	mu     sync.Mutex
	cancel context.CancelFunc // nil while not running
	// wg owns every run of the standby's queue, including those released on
	// promotion whose attempts are still finishing; Service.Run waits for it.
	wg conc.WaitGroup
}

// ensure starts the standby's queue work unless it runs.
func (sb *standby) ensure(hard context.Context, s *Service) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(hard)
	sb.cancel = cancel
	sb.wg.Go(func() {
		backoff := time.Second
		for ctx.Err() == nil {
			err := stage.Run("standby queue", func() error { return s.runQueueOnly(ctx, hard) })
			if err == nil || ctx.Err() != nil {
				continue
			}
			// A standby's queue work is a bonus, never a reason to exit.
			s.logFailure("standby retry queue stopped; restarting", err, backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			backoff = min(backoff*2, 30*time.Second)
		}
	})
}

// release stops claiming without waiting for the attempts under way: they
// finish within the delivery timeout and are recorded (under the hard
// context), or, if the process dies first, their leases lapse and another
// process sends them again.
func (sb *standby) release() {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.cancel != nil {
		sb.cancel()
		sb.cancel = nil
	}
}

// runQueueOnly is the delivery half of the pipeline, without the stream:
// it claims until stop ends; its attempts run, and are recorded, until they
// finish or hard ends.
func (s *Service) runQueueOnly(stop, hard context.Context) error {
	db, err := pgxpool.New(hard, s.cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("open pool: %w", err)
	}
	defer db.Close()
	worker, queue := s.newDelivery(db)

	// The attempts outlive the claiming: they run under work, which ends
	// only after they are recorded.
	work, stopWork := context.WithCancel(hard)
	defer stopWork()
	g := stage.NewGroup(work)
	g.Go("standby recorder", g.Context(), func() error { return worker.Run(g.Context()) })
	// Claiming stops on stop, and also when the recorder fails.
	claim, stopClaim := context.WithCancel(stop)
	defer stopClaim()
	context.AfterFunc(g.Context(), stopClaim)
	qerr := stage.Run("standby queue", func() error { return queue.Run(claim, g.Context()) })
	worker.Wait()
	fctx, cancel := context.WithTimeout(g.Context(), max(deliver.SettingsFrom(s.cfg.Mapping.Delivery).Timeout, 5*time.Second))
	worker.Flush(fctx)
	cancel()
	failure := g.Cause()
	g.Cancel()
	g.Wait()
	if qerr != nil {
		return qerr
	}
	return failure
}
