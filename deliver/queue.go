package deliver

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Defaults applied by NewQueue.
const (
	DefaultPollInterval = 250 * time.Millisecond
	DefaultClaimBatch   = 100
)

// QueueConfig configures a Queue.
type QueueConfig struct {
	Retry   RetryPolicy
	Timeout time.Duration // the worker's attempt timeout; sizes the lease
	// UserAgent is sent with queued deliveries (the dialect's is not stored).
	UserAgent    string
	PollInterval time.Duration
	ClaimBatch   int
	// Lease is how long a claimed row is hidden from other claimers: when a
	// process dies mid-attempt its rows come due again after this.
	Lease time.Duration
	// Name identifies this process in walhook.deliveries.locked_by.
	Name string
	// Dialects are the running config's; a queued request of a known
	// dialect is sent with its current headers, user agent and rate limit.
	Dialects map[string]*Dialect
}

// Queue sends the deliveries waiting in walhook.deliveries when they come
// due: retries of failed attempts and redeliver() requests. Any number of
// processes may run a Queue on the same database; a row is claimed by one of
// them with FOR UPDATE SKIP LOCKED and leased, not held in an open
// transaction, so an attempt never pins a connection or a snapshot.
type Queue struct {
	cfg    QueueConfig
	db     *pgxpool.Pool
	worker *Worker
	log    *slog.Logger
}

// NewQueue returns a Queue that sends through w, and makes w's recorder queue
// retries by cfg.Retry. Call it before w runs.
func NewQueue(cfg QueueConfig, db *pgxpool.Pool, w *Worker, logger *slog.Logger) *Queue {
	cfg.Retry = cfg.Retry.withDefaults()
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.ClaimBatch <= 0 {
		cfg.ClaimBatch = DefaultClaimBatch
	}
	if cfg.Lease <= 0 {
		// Long enough for the attempt and the batch that records it, with
		// room for a slow database.
		cfg.Lease = 2*cfg.Timeout + time.Minute
	}
	if cfg.Name == "" {
		host, _ := os.Hostname()
		cfg.Name = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "walhook"
	}
	p := cfg.Retry
	w.rec.policy.Store(&p)
	return &Queue{cfg: cfg, db: db, worker: w, log: logger.With("component", "queue")}
}

// queued is one claimed row of walhook.deliveries.
type queued struct {
	id                            int64
	sub, eventID, event, url, mth string
	headers                       []byte
	dialect                       string
	committed                     *time.Time
	body                          []byte
	attempt                       int
	secret, prevSecret            *string
	eventIDs                      []string // a batch's, else nil
}

// Run polls for due deliveries until stop ends; attempts are made under work,
// which outlives stop so that a drain lets them finish and be recorded.
func (q *Queue) Run(stop, work context.Context) error {
	t := time.NewTicker(q.cfg.PollInterval)
	defer t.Stop()
	backoff := q.cfg.PollInterval
	for {
		n, err := q.poll(stop, work)
		switch {
		case stop.Err() != nil:
			return nil
		case err != nil:
			q.log.Warn("claim due deliveries; retrying", "err", err, "backoff", backoff)
			backoff = min(backoff*2, 10*time.Second)
			select {
			case <-time.After(backoff):
			case <-stop.Done():
				return nil
			}
			continue
		}
		backoff = q.cfg.PollInterval
		if n == q.cfg.ClaimBatch {
			continue // more may be due now
		}
		select {
		case <-t.C:
		case <-q.worker.rec.settled:
			// Queued deliveries finished: what waits behind them may be due.
		case <-stop.Done():
			return nil
		}
	}
}

// poll claims one batch of due rows and submits them, returning how many it
// claimed.
func (q *Queue) poll(stop, work context.Context) (int, error) {
	// Claim no more than this process can start soon: what it claims waits
	// here under a lease, out of reach of processes with room for it.
	limit := q.cfg.ClaimBatch - q.worker.waiting()
	if limit <= 0 {
		return 0, nil
	}
	batch, err := q.claim(stop, limit)
	if err != nil || len(batch) == 0 {
		return 0, err
	}
	for i, d := range batch {
		if stop.Err() != nil {
			// Stopping: what was claimed but not started goes back at once
			// instead of waiting out its lease.
			q.release(context.WithoutCancel(work), batch[i:])
			return len(batch), nil
		}
		r := q.request(d)
		q.worker.rec.queued.Store(r, d.id)
		// The attempt runs under work, not stop: a drain lets it finish and
		// be recorded instead of recording a cancelled attempt as a failure.
		if err := q.worker.Submit(work, r); err != nil {
			q.worker.rec.queued.Delete(r)
			q.release(context.WithoutCancel(work), batch[i:])
			return len(batch), nil
		}
	}
	return len(batch), nil
}

// claim leases up to ClaimBatch due rows whose subscription is active. Due
// rows of a removed subscription are dropped, and those of an inactive one
// are parked at 'infinity' (activate() brings them back), so that every poll
// scans only rows it can send.
func (q *Queue) claim(ctx context.Context, limit int) ([]queued, error) {
	var out []queued
	err := pgx.BeginFunc(ctx, q.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM walhook.deliveries d
			WHERE d.next_attempt_at <= now()
			  AND NOT EXISTS (SELECT 1 FROM walhook.subscriptions s WHERE s.id = d.subscription_id)`); err != nil {
			return fmt.Errorf("drop deliveries of removed subscriptions: %w", err)
		}
		// FOR SHARE OF s makes a concurrent activate() wait for this to
		// commit, and then unpark what it parked; see activate in 0002_queue.sql.
		if _, err := tx.Exec(ctx, `WITH idle AS (
				SELECT d.id FROM walhook.deliveries d
				JOIN walhook.subscriptions s ON s.id = d.subscription_id
				WHERE d.next_attempt_at <= now() AND NOT s.active
				FOR UPDATE OF d SKIP LOCKED
				FOR SHARE OF s)
			UPDATE walhook.deliveries d SET next_attempt_at = 'infinity', locked_by = NULL
			FROM idle WHERE d.id = idle.id`); err != nil {
			return fmt.Errorf("park deliveries of inactive subscriptions: %w", err)
		}
		rows, err := tx.Query(ctx, `WITH due AS (
				SELECT d.id FROM walhook.deliveries d
				JOIN walhook.subscriptions s ON s.id = d.subscription_id AND s.active
				WHERE d.next_attempt_at <= now()
				  -- ordering: key: only the first left of its subscription
				  -- and key, so one key's deliveries go one at a time, in
				  -- commit order, across retries and processes.
				  AND (d.order_key IS NULL OR NOT EXISTS (SELECT 1 FROM walhook.deliveries e
					WHERE e.subscription_id = d.subscription_id AND e.order_key = d.order_key
					  AND (e.order_lsn, e.order_n, e.id) < (d.order_lsn, d.order_n, d.id)))
				ORDER BY d.next_attempt_at
				LIMIT $1
				FOR UPDATE OF d SKIP LOCKED)
			UPDATE walhook.deliveries d
			SET next_attempt_at = now() + $2 * interval '1 millisecond', locked_by = $3
			FROM due, walhook.subscriptions s
			WHERE d.id = due.id AND s.id = d.subscription_id
			RETURNING d.id, d.subscription_id::text, d.event_id, d.event, d.target_url, d.method,
				d.headers, d.body, d.attempt, coalesce(d.dialect, ''), d.committed_at, s.secret,
				CASE WHEN s.previous_secret_until > now() THEN s.previous_secret END, d.event_ids`,
			limit, q.cfg.Lease.Milliseconds(), q.cfg.Name)
		if err != nil {
			return err
		}
		var d queued
		_, err = pgx.ForEachRow(rows, []any{&d.id, &d.sub, &d.eventID, &d.event, &d.url, &d.mth,
			&d.headers, &d.body, &d.attempt, &d.dialect, &d.committed, &d.secret, &d.prevSecret, &d.eventIDs}, func() error {
			out = append(out, d)
			d = queued{}
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("claim due deliveries: %w", err)
	}
	return out, nil
}

// release hands claimed rows back without an attempt.
func (q *Queue) release(ctx context.Context, rows []queued) {
	ids := make([]int64, len(rows))
	for i, d := range rows {
		ids[i] = d.id
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := q.db.Exec(ctx, `UPDATE walhook.deliveries SET next_attempt_at = now(), locked_by = NULL
		WHERE id = ANY($1) AND locked_by = $2`, ids, q.cfg.Name); err != nil {
		// Not fatal: the lease runs out and the rows come due again.
		q.log.Warn("release claimed deliveries", "deliveries", len(ids), "err", err)
	}
}

// key decodes a secret; an unusable one sends unsigned, with a warning.
func (q *Queue) key(sub string, secret *string) []byte {
	if secret == nil || *secret == "" {
		return nil
	}
	k, err := SecretKey(*secret)
	if err != nil {
		q.log.Warn("subscription secret unusable; sending unsigned", "subscription_id", sub)
	}
	return k
}

func (q *Queue) request(d queued) *Request {
	key := q.key(d.sub, d.secret)
	var prev []byte
	if key != nil {
		prev = q.key(d.sub, d.prevSecret)
	}
	var h http.Header
	if len(d.headers) > 0 {
		var m map[string]string
		if err := json.Unmarshal(d.headers, &m); err == nil {
			h = make(http.Header, len(m))
			for k, v := range m {
				h.Set(k, v)
			}
		}
	}
	r := &Request{
		SubscriptionID: d.sub,
		EventID:        d.eventID,
		Event:          d.event,
		URL:            d.url,
		Method:         d.mth,
		UserAgent:      q.cfg.UserAgent,
		Header:         h,
		Body:           d.body,
		Key:            key,
		PrevKey:        prev,
		Attempt:        d.attempt + 1,
		Dialect:        d.dialect,
		EventIDs:       d.eventIDs,
		fromQueue:      true,
	}
	if d.committed != nil {
		r.Committed = *d.committed
	}
	if dl := q.cfg.Dialects[d.dialect]; dl != nil {
		// The stored headers lack credentials; the dialect has them.
		r.Header, r.UserAgent, r.RateLimit = dl.Header, dl.UserAgent, dl.RateLimit
		if dl.Batch != nil && r.Event != BatchEvent {
			// One event queued for a batching dialect (a held delivery
			// released, a redelivery of an attempt made before the dialect
			// batched) goes as a batch of one: its receiver gets one format.
			b := batchRequest([]*Request{r})
			b.Attempt, b.members, b.Done = r.Attempt, nil, nil
			return b
		}
	}
	return r
}

// Enqueue queues first attempts in walhook.deliveries, due now, for the
// retry queue of any process to send: how a held delivery that is judged
// again goes out. db is a transaction, so the queueing commits with
// whatever decided it.
func Enqueue(ctx context.Context, db interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}, reqs []*Request) error {
	if len(reqs) == 0 {
		return nil
	}
	var q queueRows
	for _, r := range reqs {
		q.add(r, 0)
		// Attempts made so far: none. The queue sends attempt 1.
		q.attempt[len(q.attempt)-1] = 0
	}
	if _, err := db.Exec(ctx, `INSERT INTO walhook.deliveries
		(subscription_id, event_id, event, target_url, method, headers, body, attempt, next_attempt_at, dialect, committed_at)
		SELECT s, e, ev, u, m, h, b, n, now(), nullif(dl, ''), c
		FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::bytea[], $8::int[],
			$9::text[], $10::timestamptz[]) AS q(s, e, ev, u, m, h, b, n, dl, c)`,
		q.sub, q.eventID, q.event, q.url, q.method, q.headers, q.body, q.attempt, q.dialect, q.committed); err != nil {
		return fmt.Errorf("queue %d deliveries: %w", len(reqs), err)
	}
	return nil
}
