package walhook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook/acl"
	"github.com/walhook/walhook/cdc"

	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/internal/metrics"
	"github.com/walhook/walhook/internal/stage"
	"github.com/walhook/walhook/internal/subs"
	"github.com/walhook/walhook/mapping"
	"github.com/walhook/walhook/schema"
)

// Errors returned by the Service's lifecycle methods.
var (
	// ErrRunning means Run was called on a Service that already ran: a
	// Service runs once; make a new one to run again.
	ErrRunning = errors.New("walhook: Run called twice")
)

// Service is one walhook process: it takes the leader lock for its slot (or
// stands by, working the retry queue, while another process leads), streams
// the slot, routes each change to its subscriptions, delivers, and
// acknowledges the slot only as far as every delivery is sent or durably
// queued. A failure of any stage, a panic included, stops the whole pipeline,
// drops readiness at once, and restarts it with backoff from the slot's
// acknowledged position, so nothing is lost.
type Service struct {
	cfg      Config
	log      *slog.Logger
	mapper   *mapping.Mapper
	rules    *acl.Rules
	dialects map[string]*deliver.Dialect
	metrics  *metrics.Metrics
	state    *state
	standby  standby
	name     string // in walhook.processes

	once    sync.Once // guards running
	running bool
	soft    chan struct{} // closed by Stop: stop reading, drain
	hard    chan struct{} // closed by StopAndCancel: stop now
	stopS   sync.Once
	stopH   sync.Once
	done    chan struct{} // closed when Run returns

	// digest is configDigest of the running config.
	digest string

	// rebuildIndex is set when walhook.subscriptions was out of the
	// publication: the next pipeline rebuilds the index from the table.
	rebuildIndex atomic.Bool
	// peers counts the standbys that share the delivery queue, as
	// walhook.processes last said.
	peers atomic.Int64

	// hooks are for tests of this package: they inject failures.
	hooks hooks

	console consoleState // the console and portal (console.go)
}

// hooks let this package's tests make a stage fail. All nil in production.
type hooks struct {
	// route is called before the router handles a change.
	route func()
	// worker overrides the deliver.Worker config, e.g. a transport that
	// panics.
	worker func(*deliver.Config)
	// queue overrides the retry queue's config, e.g. a short lease.
	queue func(*deliver.QueueConfig)
	// chunkRead is called with each backfill chunk once it is read and
	// before its high watermark: a write made there commits inside the
	// chunk's window.
	chunkRead func(rows []change.Row)
}

// New checks cfg, compiles its mapping and rules, and returns a Service
// ready to Run. It does no I/O.
func New(cfg Config, logger *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	mapper, rules, err := compileConfig(cfg.Mapping)
	if err != nil {
		return nil, err
	}
	s := &Service{
		cfg:      cfg,
		log:      logger,
		mapper:   mapper,
		rules:    rules,
		dialects: deliver.Dialects(cfg.Mapping, Version),
		metrics:  metrics.New(Version),
		state:    newState(),
		name:     processName(),
		soft:     make(chan struct{}),
		hard:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	s.metrics.SetState(s.state.leading)
	s.digest = configDigest(cfg.Mapping, mapper)
	return s, nil
}

// errReinstalled ends a pipeline when the stream announces an install of
// another config than the one running; the next pipeline follows it.
var errReinstalled = errors.New("walhook was installed with another config while this process runs")

// ConfigChangedError stops Run: walhook was installed with another config
// and this process cannot follow (no Config.Reload, or it returned another
// config still).
type ConfigChangedError struct{ Reason string }

func (e *ConfigChangedError) Error() string {
	return "walhook was installed with another config than this process runs: " + e.Reason
}

// installedDigest reads the digest of the config walhook was last
// installed with; "" when the installation predates it.
func installedDigest(ctx context.Context, db *pgxpool.Pool) (string, error) {
	var d string
	err := db.QueryRow(ctx, `SELECT value FROM walhook.settings WHERE key = 'config_digest'`).Scan(&d)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the installed config's digest: %w", err)
	}
	return d, nil
}

// reload takes the config Config.Reload returns, if it is the one
// installed (want), for the next pipeline.
func (s *Service) reload(ctx context.Context, want string) error {
	if s.cfg.Reload == nil {
		return &ConfigChangedError{Reason: "restart walhook run with the config that was installed"}
	}
	cfg, err := s.cfg.Reload()
	if err != nil {
		return &ConfigChangedError{Reason: "reload the config: " + err.Error()}
	}
	mapper, rules, err := compileConfig(cfg)
	if err != nil {
		return &ConfigChangedError{Reason: "reload the config: " + err.Error()}
	}
	if d := configDigest(cfg, mapper); d != want {
		return &ConfigChangedError{Reason: "the config file is not the one installed either: run walhook install with the config to run, then restart walhook run"}
	}
	s.cfg.Mapping, s.mapper, s.rules, s.dialects, s.digest = cfg, mapper, rules, deliver.Dialects(cfg, Version), want
	s.log.Info("reloaded the config after walhook install changed it", "tables", len(cfg.Tables))
	return nil
}

// Run runs the service until Stop or StopAndCancel is called, or ctx ends
// (which is StopAndCancel). It returns nil after a stop, and an error only
// when the service cannot go on: walhook is not installed for this config,
// the slot is missing, or PostgreSQL refuses in a way no restart cures.
// Failures a restart may cure (a panic, PostgreSQL restarting, the
// connection dropping) restart the pipeline with backoff instead; Health
// reports them.
func (s *Service) Run(ctx context.Context) error {
	first := false
	s.once.Do(func() { first = true })
	if !first {
		return ErrRunning
	}
	defer close(s.done)
	hard, cancelHard := context.WithCancel(ctx)
	defer cancelHard()
	soft, cancelSoft := context.WithCancel(hard)
	defer cancelSoft()
	var wg conc.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		soft := s.soft
		for {
			select {
			case <-soft:
				cancelSoft()
				soft = nil // a closed channel would spin
			case <-s.hard:
				cancelHard()
				return
			case <-hard.Done():
				return
			}
		}
	})
	defer cancelHard()

	warnings, err := checkInstalled(hard, s.cfg.DatabaseURL, s.cfg.Publication, s.mapper)
	for _, w := range warnings {
		s.log.Warn(w)
	}
	if err != nil {
		var mismatch installMismatch
		if errors.As(err, &mismatch) {
			return err
		}
		// PostgreSQL may be restarting: the pipeline retries the connection,
		// and checks the slot when it gets one.
		s.log.Warn("could not check the installation; starting anyway", "err", err)
	}
	if err := s.check(hard); err != nil {
		return err
	}
	if err := s.reconcileStatic(hard); err != nil {
		return err
	}
	reporting, stopReporting := context.WithCancel(hard)
	defer stopReporting()
	wg.Go(func() { s.reportProcess(reporting) })
	defer s.startConsole(hard)()
	s.log.Info("walhook starting", "version", Version, "slot", s.cfg.Slot, "publication", s.cfg.Publication, "tables", len(s.cfg.Mapping.Tables))
	err = s.supervise(soft, hard)
	s.stopStandby(hard, cancelHard)
	if err == nil {
		s.log.Info("walhook stopped")
	}
	return err
}

// check runs Check at start: a mistake in the config (a column a rule reads
// that the table lacks, owners.query not fitting) or in the database
// (wal_level, the slot of another database) is refused up front, before
// anything is read from the slot; nothing is lost, since the slot keeps the
// changes. A database that cannot be reached only warns: the pipeline
// retries the connection.
func (s *Service) check(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.cfg.DatabaseURL)
	if err != nil {
		s.log.Warn("could not check the config against the database; starting anyway", "err", err)
		return nil
	}
	defer conn.Close(context.WithoutCancel(ctx))
	warnings, err := Check(ctx, conn, s.cfg.Mapping, CheckOptions{Slot: s.cfg.Slot})
	var cfgErrs mapping.Errors
	var dbErr DatabaseError
	switch {
	case errors.As(err, &cfgErrs) || errors.As(err, &dbErr):
		return err
	case err != nil:
		s.log.Warn("could not check the config against the database; starting anyway", "err", err)
	}
	for _, w := range warnings {
		s.log.Warn(w)
	}
	return nil
}

// reconcileStatic brings the static subscriptions in line with the config
// at start (install does too). A declaration the SQL API refuses is a config
// error and stops the start; a database that cannot be reached only delays
// it to the next install or start.
func (s *Service) reconcileStatic(ctx context.Context) error {
	if len(s.cfg.Mapping.Subscriptions) == 0 {
		return nil
	}
	conn, err := pgx.Connect(ctx, s.cfg.DatabaseURL)
	if err != nil {
		s.log.Warn("could not reconcile the static subscriptions; starting anyway", "err", err)
		return nil
	}
	defer conn.Close(context.WithoutCancel(ctx))
	changes, err := schema.Reconcile(ctx, conn, s.cfg.Mapping.Subscriptions)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "22023":
		return fmt.Errorf("reconcile static subscriptions: %w", err)
	case err != nil:
		s.log.Warn("could not reconcile the static subscriptions; starting anyway", "err", err)
	}
	for _, c := range changes {
		s.log.Info(c)
	}
	return nil
}

// stopStandby ends the standby's queue work: it stops claiming, and the
// attempts under way, including those released by a promotion, finish
// within the shutdown timeout before hard ends them.
func (s *Service) stopStandby(hard context.Context, cancelHard context.CancelFunc) {
	s.standby.release()
	finished := make(chan struct{})
	var w conc.WaitGroup
	w.Go(func() {
		s.standby.wg.Wait()
		close(finished)
	})
	select {
	case <-finished:
	case <-time.After(s.cfg.ShutdownTimeout):
	case <-hard.Done():
	}
	cancelHard()
	w.Wait()
}

// Stop stops reading the slot, lets the deliveries under way finish (up to
// Config.ShutdownTimeout), records them, acknowledges the slot as far as
// they got, and waits for Run to return. If ctx ends first, Stop cancels
// what is left as StopAndCancel does and returns ctx's error once Run has
// returned. What was not finished is delivered again after the next start.
func (s *Service) Stop(ctx context.Context) error {
	s.stopS.Do(func() { close(s.soft) })
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		_ = s.StopAndCancel(context.WithoutCancel(ctx))
		return ctx.Err()
	}
}

// StopAndCancel stops at once: attempts under way are cancelled and left
// unacknowledged, to be delivered again after the next start. It waits for
// Run to return or ctx to end.
func (s *Service) StopAndCancel(ctx context.Context) error {
	s.stopH.Do(func() { close(s.hard) })
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// supervise runs the pipeline until soft ends (stop reading, drain, exit)
// or hard ends (exit now). A failure that a restart can cure (PostgreSQL
// restarting, the connection dropping, another process still holding the
// slot, a stage that panicked) restarts the pipeline after a backoff; the
// slot's confirmed LSN makes the restart lose nothing.
func (s *Service) supervise(soft, hard context.Context) error {
	backoff := s.cfg.MinRestartBackoff
	for {
		started := time.Now()
		err := s.lead(soft, hard, s.pipeline)
		if soft.Err() != nil || hard.Err() != nil {
			return nil
		}
		if isPublicationMissing(err) {
			return publicationDropped(s.cfg.Publication, s.cfg.Slot, err)
		}
		if errors.Is(err, errIndexStale) {
			s.rebuildIndex.Store(true)
		}
		if errors.Is(err, errReinstalled) {
			// Announced by the stream: the next pipeline reloads (or
			// stops) when it reads what was installed.
			s.log.Info("walhook install ran with another config; restarting the pipeline to follow it")
			continue
		}
		if !retryable(err) && !errors.Is(err, errLostLeadership) {
			return err
		}
		if time.Since(started) > time.Minute {
			backoff = s.cfg.MinRestartBackoff
		}
		if err != nil {
			s.state.failed(err)
			s.state.restarts.Add(1)
		}
		var active *cdc.SlotActiveError
		if errors.As(err, &active) {
			s.log.Warn("slot is held by another process; waiting for it to go", "slot", s.cfg.Slot, "retry_in", backoff, "err", err)
		} else {
			s.logFailure("pipeline stopped; restarting", err, backoff)
		}
		select {
		case <-time.After(backoff):
		case <-soft.Done():
			return nil
		}
		backoff = min(backoff*2, s.cfg.MaxRestartBackoff)
	}
}

// logFailure logs a failure that is about to be retried; a panic is logged
// at ERROR with its stack, once, here.
func (s *Service) logFailure(msg string, err error, retryIn time.Duration) {
	var pe *stage.PanicError
	if errors.As(err, &pe) {
		s.log.Error(msg, "err", err, "stage", pe.Stage, "retry_in", retryIn, "stack", string(pe.Stack))
		return
	}
	s.log.Warn(msg, "err", err, "retry_in", retryIn)
}

// retryable says whether an error is one a restart may cure.
func retryable(err error) bool {
	if err == nil {
		return true
	}
	if stage.IsPanic(err) {
		// A bug met one change; the restart replays from the slot and the
		// backoff keeps a repeating panic from spinning.
		return true
	}
	var active *cdc.SlotActiveError
	if errors.As(err, &active) {
		return true
	}
	var dropped *PublicationDroppedError
	var changed *ConfigChangedError
	if errors.Is(err, cdc.ErrSlotMissing) || errors.As(err, &dropped) || errors.As(err, &changed) {
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

// pipeline is one run of the leader's stages: stream → consumer (router) →
// worker → recorder, the retry queue, and the samplers. The first stage to
// fail or panic stops them all; then what finished is acknowledged and the
// error returned.
func (s *Service) pipeline(soft, hard context.Context) error {
	log := s.log
	db, err := pgxpool.New(hard, s.cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("open pool: %w", err)
	}
	defer db.Close()

	var slot cdc.SlotInfo
	if err := withConn(hard, db, func(conn *pgx.Conn) error {
		slot, err = cdc.Slot(hard, conn, s.cfg.Slot)
		return err
	}); err != nil {
		return err
	}
	if slot.Active {
		return &cdc.SlotActiveError{Slot: s.cfg.Slot, Err: fmt.Errorf("active for PID %d", slot.ActivePID)}
	}
	if want, err := installedDigest(hard, db); err != nil {
		return err
	} else if want != "" && want != s.digest {
		if err := s.reload(hard, want); err != nil {
			return err
		}
	}
	if err := s.checkDrift(hard, db); errors.Is(err, errIndexStale) {
		s.rebuildIndex.Store(true)
	} else if err != nil {
		return err
	}
	if s.rebuildIndex.Load() {
		n, _, err := subs.Rebuild(hard, db, slot.ConfirmedFlush)
		if err != nil {
			return err
		}
		s.rebuildIndex.Store(false)
		log.Warn("rebuilt the subscription index from walhook.subscriptions: changes to subscriptions while it was out of the publication were not seen in commit order",
			"subscriptions", n, "lsn", slot.ConfirmedFlush.String())
	}
	idx, err := subs.Load(hard, db, slot.ConfirmedFlush)
	if err != nil {
		return err
	}
	rebuiltAt, err := subs.RebuiltAt(hard, db)
	if err != nil {
		return err
	}
	log.Info("loaded subscriptions", "subscriptions", idx.Len(), "lsn", slot.ConfirmedFlush.String())
	// This start may run a fixed config: judge every held delivery again.
	var asked int64
	var startedAt time.Time
	if err := db.QueryRow(hard, `WITH up AS (UPDATE walhook.held SET release_requested_at = now(), updated_at = now()
			WHERE status = 'held' AND release_requested_at IS NULL RETURNING 1)
		SELECT count(*), now() FROM up`).Scan(&asked, &startedAt); err != nil {
		return fmt.Errorf("ask for held deliveries to be judged again: %w", err)
	}
	if asked > 0 {
		log.Warn("judging held deliveries again with this config", "held", asked)
	}

	stream, err := cdc.New(cdc.Config{
		DatabaseURL:     s.cfg.DatabaseURL,
		Slot:            s.cfg.Slot,
		Publication:     s.cfg.Publication,
		Start:           slot.ConfirmedFlush,
		StandbyInterval: s.cfg.StandbyInterval,
		Observer:        s.metrics,
	}, log)
	if err != nil {
		return err
	}
	worker, queue := s.newDelivery(db)

	// The pipeline's stages share g's context, cancelled when one fails.
	// The readers (stream, consumer, claiming) are a group of their own, so
	// that a drain waits for them to stop; they also stop on soft, while the
	// attempts already started run on under g's context and are drained.
	g := stage.NewGroup(hard)
	g.OnFail = func(err error) { s.state.failed(err) }
	pctx := g.Context()
	readers := stage.NewGroup(pctx)
	readers.OnFail = g.Fail
	readCtx, stopRead := context.WithCancel(readers.Context())
	defer stopRead()
	context.AfterFunc(soft, stopRead)
	recCtx, stopRec := context.WithCancel(pctx)
	defer stopRec()

	relIDs, err := s.mappedRelations(hard, db)
	if err != nil {
		return err
	}
	var state *ownerState
	if s.cfg.Mapping.Owners != nil {
		if state, err = loadOwnerState(hard, db, slot.ConfirmedFlush, nil, log); err != nil {
			return err
		}
	}
	con := s.newConsumer(db, idx, worker, relIDs, state)
	if s.ordersByKey() {
		if con.router.pks, err = s.primaryKeys(hard, db); err != nil {
			return err
		}
	}
	con.skipSubsBefore = rebuiltAt
	con.startedAt = startedAt
	con.backfill = newBackfiller(db, s.mapper, log, s.metrics, s.cfg.BackfillChunk)
	con.backfill.chunkRead = s.hooks.chunkRead
	msgs := make(chan cdc.Message, cdc.DefaultBuffer)

	var samplers conc.WaitGroup
	g.Go("recorder", recCtx, func() error { return worker.Run(recCtx) })
	samplers.Go(func() { s.sampleMetrics(recCtx, db, stream.Tracker(), worker) })
	samplers.Go(func() { s.pruneLog(recCtx, db) })
	g.Go("publication check", recCtx, func() error { return s.watchDrift(recCtx, db) })
	readers.Go("stream", readCtx, func() error { return stream.Run(readCtx, msgs) })
	readers.Go("consumer", readCtx, func() error { return con.run(readCtx, pctx, msgs) })
	// Like the consumer: stops claiming with readCtx, while the attempts it
	// started run under pctx and are drained below.
	readers.Go("retry queue", readCtx, func() error { return queue.Run(readCtx, pctx) })
	readers.Go("backfill", readCtx, func() error { return con.backfill.run(readCtx) })
	s.state.streaming.Store(true)
	readers.Wait()
	s.state.streaming.Store(false)

	// Drain: the HTTP attempts under way finish (each within the delivery
	// timeout), their outcomes are written, and the slot learns how far that
	// got. A failure or a hard stop skips the wait; what was not recorded is
	// replayed.
	drained := make(chan struct{})
	var drainer conc.WaitGroup
	drainer.Go(func() {
		worker.Wait()
		close(drained)
	})
	deadline := time.After(s.cfg.ShutdownTimeout)
	select {
	case <-drained:
		// Writing the outcomes is bounded by the same deadline: a database
		// that refuses them must not hold the shutdown forever.
		fctx, fcancel := context.WithTimeout(pctx, s.cfg.ShutdownTimeout)
		worker.Flush(fctx)
		fcancel()
	case <-deadline:
		log.Warn("shutdown timeout: deliveries still running are left for the next start")
	case <-pctx.Done():
	}
	failure := g.Cause()
	stopRec()
	g.Cancel()
	drainer.Wait()
	g.Wait()
	samplers.Wait()
	// Safe whatever happened: the tracker only ever counts finished work,
	// and a failed change's transaction never finished.
	s.advanceSlot(context.WithoutCancel(hard), db, stream.Tracker().Confirmed())
	return failure
}

// newDelivery builds the worker that sends and records deliveries, and the
// queue that feeds it the retries waiting in walhook.deliveries.
func (s *Service) newDelivery(db *pgxpool.Pool) (*deliver.Worker, *deliver.Queue) {
	d := deliver.SettingsFrom(s.cfg.Mapping.Delivery)
	wc := deliver.Config{
		MaxInFlight:  d.MaxInFlight,
		MaxPerHost:   d.MaxPerHost,
		Timeout:      d.Timeout,
		AllowHTTP:    s.cfg.AllowHTTP,
		AllowPrivate: s.cfg.AllowPrivateTargets,
		AllowCIDRs:   s.cfg.AllowTargetCIDRs,
		Observer:     s.metrics,
		Spill:        func() bool { return s.peers.Load() > 0 },
	}
	if s.hooks.worker != nil {
		s.hooks.worker(&wc)
	}
	worker := deliver.New(wc, db, s.log)
	qc := deliver.QueueConfig{
		Retry:     deliver.RetryPolicy{Schedule: d.Retry, History: d.History},
		Timeout:   d.Timeout,
		UserAgent: "walhook/" + Version,
		Dialects:  s.dialects,
	}
	if s.hooks.queue != nil {
		s.hooks.queue(&qc)
	}
	queue := deliver.NewQueue(qc, db, worker, s.log)
	return worker, queue
}

// pruneLogEvery is how often a long-running leader trims the subscription
// log; a start trims it too.
const pruneLogEvery = 10 * time.Minute

// pruneLog keeps walhook.subscription_log from growing with every
// subscription change a long-running process applies. It prunes only up to
// the slot's confirmed LSN as the server has it — the point a restart loads
// as of — not this process's newer view of it.
func (s *Service) pruneLog(ctx context.Context, db *pgxpool.Pool) {
	t := time.NewTicker(pruneLogEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := withConn(ctx, db, func(conn *pgx.Conn) error {
			si, err := cdc.Slot(ctx, conn, s.cfg.Slot)
			if err != nil {
				return err
			}
			return subs.Prune(ctx, db, si.ConfirmedFlush)
		})
		if err != nil && ctx.Err() == nil {
			s.log.Warn("prune the subscription log; trying again later", "err", err)
		}
	}
}

// advanceSlot is the last status update after the stream closed: it moves the
// slot to what finished during the drain.
func (s *Service) advanceSlot(ctx context.Context, db *pgxpool.Pool, lsn pglogrepl.LSN) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	waitSlotReleased(ctx, db, s.cfg.Slot, 2*time.Second)
	_, err := db.Exec(ctx, `SELECT pg_replication_slot_advance(slot_name, $2::text::pg_lsn)
		FROM pg_replication_slots WHERE slot_name = $1 AND NOT active AND confirmed_flush_lsn < $2::text::pg_lsn`, s.cfg.Slot, lsn.String())
	if err != nil {
		s.log.Warn("advance slot after drain", "lsn", lsn.String(), "err", err)
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
