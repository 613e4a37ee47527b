package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sourcegraph/conc"
)

// standbyWork is what a process does while another leads the slot: it works
// the retry queue, which any number of processes may share (rows are claimed
// with FOR UPDATE SKIP LOCKED), so standbys add delivery capacity instead of
// idling.
type standbyWork struct {
	cancel context.CancelFunc
	wg     conc.WaitGroup
}

// startStandbyWork runs the queue until stop is called or hard ends. Errors
// are logged and retried: a standby's queue work is a bonus, never a reason
// to exit.
func startStandbyWork(hard context.Context, sc serviceConfig) *standbyWork {
	ctx, cancel := context.WithCancel(hard)
	sw := &standbyWork{cancel: cancel}
	sw.wg.Go(func() {
		backoff := time.Second
		for ctx.Err() == nil {
			if err := runQueueOnly(ctx, sc); err != nil && ctx.Err() == nil {
				sc.Logger.Warn("standby retry queue stopped; restarting", "err", err, "retry_in", backoff)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
				}
				backoff = min(backoff*2, 30*time.Second)
			}
		}
	})
	return sw
}

// stop ends the standby's queue work and waits for it, attempts included:
// each finishes within the delivery timeout and its outcome is recorded.
func (sw *standbyWork) stop() {
	if sw == nil {
		return
	}
	sw.cancel()
	sw.wg.Wait()
}

// runQueueOnly is the delivery half of serveOnce, without the stream.
func runQueueOnly(ctx context.Context, sc serviceConfig) error {
	db, err := pgxpool.New(ctx, sc.DatabaseURL)
	if err != nil {
		return fmt.Errorf("open pool: %w", err)
	}
	defer db.Close()
	worker, queue := newDelivery(sc, db, sc.Logger)
	d := sc.Config.Delivery

	// The attempts outlive the claiming: they run under work, which ends
	// only after they are recorded.
	work, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	var wg conc.WaitGroup
	var recErr error
	wg.Go(func() { recErr = worker.Run(work) })
	err = queue.Run(ctx, work)
	worker.Wait()
	fctx, cancel := context.WithTimeout(work, max(d.Timeout, 5*time.Second))
	worker.Flush(fctx)
	cancel()
	stopWork()
	wg.Wait()
	if err != nil {
		return err
	}
	if recErr != nil && work.Err() == nil {
		return recErr
	}
	return nil
}
