package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook/acl"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/internal/metrics"
	"github.com/walhook/walhook/internal/subs"
	"github.com/walhook/walhook/mapping"
)

// serviceConfig is everything one walhook run needs.
type serviceConfig struct {
	DatabaseURL  string
	Config       *mapping.Config
	Mapper       *mapping.Mapper
	Rules        *acl.Rules
	Slot         string
	Publication  string
	AllowHTTP    bool
	AllowPrivate bool
	// AllowCIDRs are destinations allowed even when private ones are not.
	AllowCIDRs      []netip.Prefix
	StandbyInterval time.Duration
	ShutdownTimeout time.Duration
	// HeartbeatInterval is how often the leader writes a logical message so
	// an idle database still moves the slot.
	HeartbeatInterval time.Duration
	// Metrics receives the pipeline's figures; nil makes a private set.
	Metrics *metrics.Metrics
	// SampleInterval is how often slot lag is sampled for Metrics.
	SampleInterval time.Duration
	// State is reported by the health endpoint; nil for none.
	State  *serviceState
	Logger *slog.Logger
}

// serve runs the pipeline until soft ends (stop reading, drain, exit) or
// hard ends (exit now). A failure that a reconnect can cure (PostgreSQL
// restarting, the connection dropping, another process still holding the
// slot) restarts the pipeline after a backoff; the slot's confirmed LSN makes
// the restart lose nothing.
func serve(soft, hard context.Context, sc serviceConfig) error {
	log := sc.Logger
	if sc.State == nil {
		sc.State = newServiceState()
	}
	if sc.Metrics == nil {
		sc.Metrics = metrics.New(version)
	}
	sc.Metrics.SetState(sc.State.leading)
	backoff := 500 * time.Millisecond
	for {
		started := time.Now()
		err := lead(soft, hard, sc, sc.State, func(soft, hard context.Context) error {
			return serveOnce(soft, hard, sc)
		})
		if soft.Err() != nil || hard.Err() != nil {
			return nil
		}
		if !retryable(err) && !errors.Is(err, errLostLeadership) {
			return err
		}
		if time.Since(started) > time.Minute {
			backoff = 500 * time.Millisecond
		}
		var active *cdc.SlotActiveError
		if errors.As(err, &active) {
			log.Warn("slot is held by another process; waiting for it to go", "slot", sc.Slot, "retry_in", backoff, "err", err)
		} else {
			log.Warn("pipeline stopped; restarting", "err", err, "retry_in", backoff)
		}
		select {
		case <-time.After(backoff):
		case <-soft.Done():
			return nil
		}
		backoff = min(backoff*2, 15*time.Second)
	}
}

// retryable says whether an error is one a reconnect may cure.
func retryable(err error) bool {
	if err == nil {
		return true
	}
	var active *cdc.SlotActiveError
	if errors.As(err, &active) {
		return true
	}
	if errors.Is(err, cdc.ErrSlotMissing) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "08", "57", "53": // connection exception, operator intervention (shutdown), insufficient resources
			return true
		}
		return false
	}
	// Network errors, EOFs and timeouts: PostgreSQL went away.
	return true
}

func serveOnce(soft, hard context.Context, sc serviceConfig) error {
	log := sc.Logger
	db, err := pgxpool.New(hard, sc.DatabaseURL)
	if err != nil {
		return fmt.Errorf("open pool: %w", err)
	}
	defer db.Close()

	var slot cdc.SlotInfo
	if err := withConn(hard, db, func(conn *pgx.Conn) error {
		slot, err = cdc.Slot(hard, conn, sc.Slot)
		return err
	}); err != nil {
		return err
	}
	if slot.Active {
		return &cdc.SlotActiveError{Slot: sc.Slot, Err: fmt.Errorf("active for PID %d", slot.ActivePID)}
	}
	idx, err := subs.Load(hard, db, slot.ConfirmedFlush)
	if err != nil {
		return err
	}
	log.Info("loaded subscriptions", "subscriptions", idx.Len(), "lsn", slot.ConfirmedFlush.String())

	stream, err := cdc.New(cdc.Config{
		DatabaseURL:     sc.DatabaseURL,
		Slot:            sc.Slot,
		Publication:     sc.Publication,
		Start:           slot.ConfirmedFlush,
		StandbyInterval: sc.StandbyInterval,
		Observer:        sc.Metrics,
	}, log)
	if err != nil {
		return err
	}
	worker, queue := newDelivery(sc, db, log)

	// The pipeline's own context: cancelled when a stage fails, so the
	// others stop too.
	pctx, cancel := context.WithCancelCause(hard)
	defer cancel(nil)
	readCtx, stopRead := context.WithCancel(pctx)
	defer stopRead()
	context.AfterFunc(soft, stopRead)
	recCtx, stopRec := context.WithCancel(pctx)
	defer stopRec()

	watched := map[string]bool{}
	if sc.Config.Owners != nil {
		for _, t := range sc.Config.Owners.Watch {
			watched[t] = true
		}
	}
	con := &consumer{
		missing:        map[string]int{},
		removeOnDelete: sc.Config.Owners != nil && sc.Config.Owners.RemoveOnDelete,
		sent:           map[string]bool{},
		rules:          sc.Rules,
		owners:         acl.NewOwners(ownerSource{db: db, cfg: sc.Config.Owners, m: sc.Metrics}, 0),
		watched:        watched,
		mapper:         sc.Mapper,
		idx:            idx,
		worker:         worker,
		dialects:       deliver.Dialects(sc.Config, version),
		db:             db,
		log:            log.With("component", "pipeline"),
		metrics:        sc.Metrics,
	}
	msgs := make(chan cdc.Message, cdc.DefaultBuffer)

	var wg conc.WaitGroup
	var streamErr, consumeErr, recErr error
	wg.Go(func() {
		if recErr = worker.Run(recCtx); recErr != nil && recCtx.Err() == nil {
			cancel(recErr)
		}
	})
	wg.Go(func() { sampleMetrics(recCtx, sc, db, stream.Tracker(), worker) })
	wg.Go(func() { pruneLog(recCtx, db, sc.Slot, log) })
	var stages conc.WaitGroup
	stages.Go(func() {
		streamErr = stream.Run(readCtx, msgs)
		if readCtx.Err() == nil {
			cancel(streamErr)
		}
	})
	stages.Go(func() {
		consumeErr = con.run(readCtx, pctx, msgs)
		if readCtx.Err() == nil {
			cancel(consumeErr)
		}
	})
	stages.Go(func() {
		// Like the consumer: stops claiming with readCtx, while the attempts
		// it started run under pctx and are drained below.
		if err := queue.Run(readCtx, pctx); err != nil && readCtx.Err() == nil {
			cancel(err)
		}
	})
	sc.State.streaming.Store(true)
	stages.Wait()
	sc.State.streaming.Store(false)

	// Drain: the HTTP attempts under way finish (each within the delivery
	// timeout), their outcomes are written, and the slot learns how far that
	// got. A hard stop skips the wait; what was not recorded is replayed.
	drained := make(chan struct{})
	var drainer conc.WaitGroup
	drainer.Go(func() {
		worker.Wait()
		close(drained)
	})
	shutdown := sc.ShutdownTimeout
	if shutdown <= 0 {
		shutdown = 30 * time.Second
	}
	deadline := time.After(shutdown)
	select {
	case <-drained:
		// Writing the outcomes is bounded by the same deadline: a database
		// that refuses them must not hold the shutdown forever.
		fctx, fcancel := context.WithTimeout(pctx, shutdown)
		worker.Flush(fctx)
		fcancel()
	case <-deadline:
		log.Warn("shutdown timeout: deliveries still running are left for the next start")
	case <-pctx.Done():
	}
	failure := context.Cause(pctx)
	stopRec()
	cancel(nil)
	drainer.Wait()
	wg.Wait()
	// Safe whatever happened: the tracker only ever counts finished work.
	advanceSlot(context.WithoutCancel(hard), db, sc.Slot, stream.Tracker().Confirmed(), log)

	if failure != nil && !errors.Is(failure, context.Canceled) {
		return failure
	}
	for _, err := range []error{streamErr, consumeErr} {
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return nil
}

// pruneLogEvery is how often a long-running leader trims the subscription
// log; a start trims it too.
const pruneLogEvery = 10 * time.Minute

// pruneLog keeps walhook.subscription_log from growing with every
// subscription change a long-running process applies. It prunes only up to
// the slot's confirmed LSN as the server has it — the point a restart loads
// as of — not this process's newer view of it.
func pruneLog(ctx context.Context, db *pgxpool.Pool, slot string, log *slog.Logger) {
	t := time.NewTicker(pruneLogEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := withConn(ctx, db, func(conn *pgx.Conn) error {
			si, err := cdc.Slot(ctx, conn, slot)
			if err != nil {
				return err
			}
			return subs.Prune(ctx, db, si.ConfirmedFlush)
		})
		if err != nil && ctx.Err() == nil {
			log.Warn("prune the subscription log; trying again later", "err", err)
		}
	}
}

// newDelivery builds the worker that sends and records deliveries, and the
// queue that feeds it the retries waiting in walhook.deliveries.
func newDelivery(sc serviceConfig, db *pgxpool.Pool, log *slog.Logger) (*deliver.Worker, *deliver.Queue) {
	d := sc.Config.Delivery
	worker := deliver.New(deliver.Config{
		MaxInFlight:  d.MaxInFlight,
		MaxPerHost:   d.MaxPerHost,
		Timeout:      d.Timeout,
		AllowHTTP:    sc.AllowHTTP,
		AllowPrivate: sc.AllowPrivate,
		AllowCIDRs:   sc.AllowCIDRs,
		Observer:     sc.Metrics,
	}, db, log)
	queue := deliver.NewQueue(deliver.QueueConfig{
		Retry:     deliver.RetryPolicy{Schedule: d.Retry, History: d.History},
		Timeout:   d.Timeout,
		UserAgent: "walhook/" + version,
		Dialects:  deliver.Dialects(sc.Config, version),
	}, db, worker, log)
	return worker, queue
}

// advanceSlot is the last status update after the stream closed: it moves the
// slot to what finished during the drain.
func advanceSlot(ctx context.Context, db *pgxpool.Pool, slot string, lsn pglogrepl.LSN, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	waitSlotReleased(ctx, db, slot, 2*time.Second)
	_, err := db.Exec(ctx, `SELECT pg_replication_slot_advance(slot_name, $2::text::pg_lsn)
		FROM pg_replication_slots WHERE slot_name = $1 AND NOT active AND confirmed_flush_lsn < $2::text::pg_lsn`, slot, lsn.String())
	if err != nil {
		log.Warn("advance slot after drain", "lsn", lsn.String(), "err", err)
	}
}

func withConn(ctx context.Context, db *pgxpool.Pool, fn func(*pgx.Conn) error) error {
	c, err := db.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire connection: %w", err)
	}
	defer c.Release()
	return fn(c.Conn())
}
