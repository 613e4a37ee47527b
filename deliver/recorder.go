package deliver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// maxBatch bounds one write of attempts.
const maxBatch = 1000

// collectWait is how long the recorder gathers outcomes after the first
// before writing them.
const collectWait = 5 * time.Millisecond

// Status messages a subscription is deactivated with.
const (
	GoneMessage      = "Deactivated: the receiver answered 410 Gone"
	SuspendedMessage = "Delivery suspended due to too many delivery failures"
)

// Defaults of RetryPolicy.
const (
	DefaultMaxRetryAfter = time.Hour
	DefaultJitter        = 0.2
)

// RetryPolicy decides what follows an attempt.
type RetryPolicy struct {
	// Schedule is the delay before each attempt; attempt 1 uses Schedule[0]
	// and its length is the number of attempts (config delivery.retry).
	Schedule []time.Duration
	// History is how many finished attempts are kept per subscription, and
	// how many failures in a row suspend it (config delivery.history).
	History int
	// MaxRetryAfter caps how far a receiver's Retry-After may push a retry.
	MaxRetryAfter time.Duration
	// Jitter spreads each delay by ± this fraction, so a receiver that comes
	// back is not hit by every queued retry in the same instant.
	Jitter float64
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if len(p.Schedule) == 0 {
		p.Schedule = DefaultRetry()
	}
	if p.History <= 0 {
		p.History = DefaultHistory
	}
	if p.MaxRetryAfter <= 0 {
		p.MaxRetryAfter = DefaultMaxRetryAfter
	}
	if p.Jitter <= 0 {
		p.Jitter = DefaultJitter
	}
	return p
}

// verdict is what an attempt's outcome leads to.
type verdict int

const (
	verdictSucceeded verdict = iota // 2xx: done
	verdictRetry                    // failed; queue the next attempt
	verdictFailed                   // failed and the schedule is used up
	verdictGone                     // 410: failed, deactivate, never retry
	verdictQueued                   // not attempted: queued for any process to send
)

// decide applies the outcome rules to attempt number attempt: it returns the
// verdict and, for verdictRetry, the delay before the next attempt.
// retryAfter is what the receiver asked for (0 for nothing); rnd returns a
// number in [0, 1).
func (p RetryPolicy) decide(attempt int, o Outcome, retryAfter time.Duration, rnd func() float64) (verdict, time.Duration) {
	switch {
	case o.queue:
		return verdictQueued, 0
	case o.Succeeded():
		return verdictSucceeded, 0
	case o.Err == nil && o.Status == http.StatusGone:
		return verdictGone, 0
	case attempt >= len(p.Schedule):
		return verdictFailed, 0
	}
	d := p.Schedule[max(attempt, 0)]
	d += time.Duration((rnd()*2 - 1) * p.Jitter * float64(d))
	// Retry-After may only postpone: a receiver cannot make us retry faster
	// than the schedule, nor park a delivery for longer than the cap.
	if ra := min(retryAfter, p.MaxRetryAfter); ra > d {
		d = ra
	}
	return verdictRetry, d
}

// ParseRetryAfter reads a Retry-After header, delay-seconds or an HTTP date,
// as a delay from now; 0 when absent or malformed.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if v[0] >= '0' && v[0] <= '9' {
		var secs int64
		for _, c := range v {
			if c < '0' || c > '9' {
				return 0
			}
			secs = secs*10 + int64(c-'0')
			if secs > int64(24*time.Hour/time.Second) {
				return 24 * time.Hour // far beyond any cap; stop before overflow
			}
		}
		return time.Duration(secs) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	return max(t.Sub(now), 0)
}

// retryAfter is the delay a failed attempt's receiver asked for.
func retryAfter(o Outcome) time.Duration { return o.RetryAfter }

type record struct {
	r *Request
	o Outcome
	v verdict // set by write, for the observer
}

// recorder writes attempt outcomes in batches, each batch in one transaction:
// the attempts (one COPY instead of one INSERT per attempt is what lets the
// history keep up with thousands of deliveries a second), the queued retries,
// failure counts, deactivations and the pruning of the history. Done runs
// only after that transaction commits, so a change is acknowledged only once
// its delivery succeeded, finally failed, or sits durably in the queue.
type recorder struct {
	db  *pgxpool.Pool
	log *slog.Logger
	in  chan record
	// copyRefused is set once COPY was refused (row-level security).
	copyRefused atomic.Bool
	// unwritten counts outcomes handed to add and not yet written.
	unwritten atomic.Int64
	// policy is set by NewQueue before the worker runs; nil means defaults.
	policy atomic.Pointer[RetryPolicy]
	// queued maps a Request the Queue submitted to its walhook.deliveries
	// row, which the batch that records its outcome updates or removes.
	queued sync.Map // *Request → int64
	// obs is told each recorded outcome; nil for none.
	obs Observer
	// fails rate-limits the WARN lines of failed attempts.
	fails failureLog
	// settled is signalled when a batch finished queued deliveries: the
	// queue polls again at once, for what waited behind them (ordering:
	// key) instead of one delivery per key per poll interval.
	settled chan struct{}
}

func newRecorder(db *pgxpool.Pool, log *slog.Logger) *recorder {
	return &recorder{db: db, log: log, in: make(chan record, maxBatch), settled: make(chan struct{}, 1)}
}

func (rc *recorder) retryPolicy() RetryPolicy {
	if p := rc.policy.Load(); p != nil {
		return *p
	}
	return RetryPolicy{}.withDefaults()
}

func (rc *recorder) add(ctx context.Context, r *Request, o Outcome) {
	if ctx.Err() != nil {
		// A hard stop: the attempt was cut short (or never made) by it, and
		// recording that as a failure would queue a retry and acknowledge
		// the change. Unrecorded, it is replayed after the restart. Checked
		// first because select picks at random among ready cases.
		return
	}
	rc.unwritten.Add(1)
	select {
	case rc.in <- record{r: r, o: o}:
	case <-ctx.Done():
		rc.unwritten.Add(-1)
	}
}

func (rc *recorder) run(ctx context.Context) error {
	// Learn up front whether row-level security applies to this role, so the
	// first batch does not have to fail to find out. A failed look-up leaves
	// the fallback in insertAttempts to find out later.
	var rls bool
	if err := rc.db.QueryRow(ctx, `SELECT row_security_active('walhook.attempts')`).Scan(&rls); err == nil && rls {
		rc.copyRefused.Store(true)
	}
	batch := make([]record, 0, maxBatch)
	collect := time.NewTimer(time.Hour)
	collect.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case rec := <-rc.in:
			batch = append(batch[:0], rec)
		}
		// Collect for a moment before writing: under load a batch then
		// holds hundreds of outcomes instead of tens, and since the history
		// keeps only the newest attempts per subscription, most are never
		// written (see newestPerSubscription), which is most of what
		// recording costs walhook and PostgreSQL. It delays only the
		// acknowledgement, never a request.
		collect.Reset(collectWait)
	fill:
		for len(batch) < maxBatch {
			select {
			case rec := <-rc.in:
				batch = append(batch, rec)
			case <-collect.C:
				break fill
			case <-ctx.Done():
				collect.Stop()
				return ctx.Err()
			}
		}
		collect.Stop()
		backoff := 100 * time.Millisecond
		for {
			err := rc.write(ctx, batch)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			rc.log.Warn("record attempts; retrying", "attempts", len(batch), "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return ctx.Err()
			}
			backoff = min(backoff*2, 5*time.Second)
		}
		settled := false
		for i := range batch {
			if _, ok := rc.queued.Load(batch[i].r); ok && batch[i].v != verdictRetry {
				settled = true
			}
			rc.observe(batch[i].v)
			rc.logOutcome(batch[i].r, batch[i].o, batch[i].v)
			rc.queued.Delete(batch[i].r)
			if batch[i].r.Done != nil {
				batch[i].r.Done()
			}
			batch[i] = record{}
		}
		rc.unwritten.Add(-int64(len(batch)))
		if settled {
			select {
			case rc.settled <- struct{}{}:
			default:
			}
		}
	}
}

var attemptColumns = []string{"subscription_id", "event_id", "event", "attempt", "status", "response_status",
	"response_excerpt", "error", "target_url", "request_method", "request_headers", "request_body", "duration_ms",
	"request_dialect", "event_ids"}

// subTally is what one batch did to one subscription's failure count.
type subTally struct {
	reset    bool // a success in this batch: count from zero
	failures int  // failures after the last success in the batch
	gone     bool
}

// write records one batch in one transaction; on error nothing of it is kept
// and run writes it again, so every step must be correct when repeated.
func (rc *recorder) write(ctx context.Context, batch []record) error {
	p := rc.retryPolicy()
	var (
		newQ   queueRows // first attempts (and redeliveries' retries have ids) to queue
		retryQ []int64   // queued rows to attempt again …
		retryD []int64   // … after this many milliseconds
		retryN []int32   // … having made this many attempts
		doneQ  []int64   // queued rows that are finished
		tally  = map[string]*subTally{}
	)
	for i, rec := range batch {
		r, o := rec.r, rec.o
		t := tally[r.SubscriptionID]
		if t == nil {
			t = &subTally{}
			tally[r.SubscriptionID] = t
		}
		v, delay := p.decide(max(r.Attempt, 1), o, retryAfter(o), rand.Float64)
		batch[i].v = v
		if v == verdictQueued {
			// No attempt (queued behind its key's retry, or spilled): nothing
			// to count or keep in the history.
			newQ.add(r, 0)
			newQ.attempt[len(newQ.attempt)-1] = 0
			continue
		}
		switch v {
		case verdictSucceeded:
			t.reset, t.failures = true, 0
		case verdictGone:
			t.gone = true
			t.failures++
		default:
			t.failures++
		}
		qid, fromQueue := rc.queued.Load(r)
		switch {
		case fromQueue && v == verdictRetry:
			retryQ = append(retryQ, qid.(int64))
			retryD = append(retryD, delay.Milliseconds())
			retryN = append(retryN, int32(max(r.Attempt, 1)))
		case fromQueue:
			doneQ = append(doneQ, qid.(int64))
		case v == verdictRetry:
			newQ.add(r, delay)
		}
	}

	kept := newestPerSubscription(batch, p.History)
	tx, err := rc.db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin recording %d attempts: %w", len(batch), err)
	}
	// A no-op once committed; on error it discards the whole batch.
	defer func() { _ = tx.Rollback(ctx) }()
	if err := rc.insertAttempts(ctx, tx, kept); err != nil {
		return err
	}
	if len(newQ.sub) > 0 {
		if _, err := tx.Exec(ctx, `INSERT INTO walhook.deliveries
			(subscription_id, event_id, event, target_url, method, headers, body, attempt, next_attempt_at, dialect, committed_at,
			 event_ids, order_key, order_lsn, order_n)
			SELECT s, e, ev, u, m, h, b, n, now() + d * interval '1 millisecond', nullif(dl, ''), c,
				string_to_array(nullif(ids, ''), ','), ok, ol, onn
			FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::bytea[], $8::int[], $9::bigint[],
				$10::text[], $11::timestamptz[], $12::text[], $13::text[], $14::bigint[], $15::bigint[])
				AS q(s, e, ev, u, m, h, b, n, d, dl, c, ids, ok, ol, onn)`,
			newQ.sub, newQ.eventID, newQ.event, newQ.url, newQ.method, newQ.headers, newQ.body, newQ.attempt, newQ.delayMS,
			newQ.dialect, newQ.committed, newQ.eventIDs, newQ.orderKey, newQ.orderLSN, newQ.orderN); err != nil {
			return fmt.Errorf("queue %d retries: %w", len(newQ.sub), err)
		}
	}
	if len(retryQ) > 0 {
		if _, err := tx.Exec(ctx, `UPDATE walhook.deliveries d
			SET attempt = q.n, next_attempt_at = now() + q.ms * interval '1 millisecond', locked_by = NULL
			FROM unnest($1::bigint[], $2::bigint[], $3::int[]) AS q(id, ms, n) WHERE d.id = q.id`,
			retryQ, retryD, retryN); err != nil {
			return fmt.Errorf("reschedule %d queued deliveries: %w", len(retryQ), err)
		}
	}
	if len(doneQ) > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM walhook.deliveries WHERE id = ANY($1)`, doneQ); err != nil {
			return fmt.Errorf("delete %d finished deliveries: %w", len(doneQ), err)
		}
	}
	if err := rc.account(ctx, tx, p, tally); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit %d attempts: %w", len(batch), err)
	}
	return nil
}

// account applies a batch to the subscriptions it touched: failure counts,
// deactivation, and the history ring buffer. Work is per subscription touched,
// never per attempt or over the whole table.
func (rc *recorder) account(ctx context.Context, tx pgx.Tx, p RetryPolicy, tally map[string]*subTally) error {
	// Sorted, so that concurrent batches of several processes lock the same
	// rows in the same order and cannot deadlock.
	ids := make([]string, 0, len(tally))
	for id := range tally {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var zero, setIDs, addIDs, gone []string
	var setN, addN []int32
	for _, id := range ids {
		t := tally[id]
		switch {
		case t.reset && t.failures == 0:
			zero = append(zero, id)
		case t.reset:
			setIDs, setN = append(setIDs, id), append(setN, int32(t.failures))
		case t.failures > 0:
			addIDs, addN = append(addIDs, id), append(addN, int32(t.failures))
		}
		if t.gone {
			gone = append(gone, id)
		}
	}
	if len(zero) > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM walhook.subscription_failures WHERE subscription_id = ANY($1::uuid[])`, zero); err != nil {
			return fmt.Errorf("reset failure counts: %w", err)
		}
	}
	if len(setIDs) > 0 {
		if _, err := tx.Exec(ctx, `INSERT INTO walhook.subscription_failures AS f (subscription_id, consecutive_failures)
			SELECT * FROM unnest($1::uuid[], $2::int[])
			ON CONFLICT (subscription_id) DO UPDATE SET consecutive_failures = excluded.consecutive_failures`,
			setIDs, setN); err != nil {
			return fmt.Errorf("set failure counts: %w", err)
		}
	}
	var suspended []string
	if len(addIDs) > 0 {
		rows, err := tx.Query(ctx, `INSERT INTO walhook.subscription_failures AS f (subscription_id, consecutive_failures)
			SELECT * FROM unnest($1::uuid[], $2::int[])
			ON CONFLICT (subscription_id) DO UPDATE SET consecutive_failures = f.consecutive_failures + excluded.consecutive_failures
			RETURNING subscription_id::text, consecutive_failures`, addIDs, addN)
		if err != nil {
			return fmt.Errorf("count failures: %w", err)
		}
		var id string
		var n int
		if _, err := pgx.ForEachRow(rows, []any{&id, &n}, func() error {
			if n >= p.History {
				suspended = append(suspended, id)
			}
			return nil
		}); err != nil {
			return fmt.Errorf("count failures: %w", err)
		}
	}
	// Deactivating updates walhook.subscriptions, which is in the
	// publication: the stream brings the change back to every process's
	// index, in commit order, so no further change is matched to it.
	if len(gone) > 0 {
		if _, err := tx.Exec(ctx, `UPDATE walhook.subscriptions SET active = false, status_message = $2, updated_at = now()
			WHERE id = ANY($1::uuid[]) AND active`, gone, GoneMessage); err != nil {
			return fmt.Errorf("deactivate gone subscriptions: %w", err)
		}
		// The receiver said the endpoint is gone for good: queued retries to
		// it would only fail again.
		if _, err := tx.Exec(ctx, `DELETE FROM walhook.deliveries WHERE subscription_id = ANY($1::uuid[])`, gone); err != nil {
			return fmt.Errorf("drop deliveries of gone subscriptions: %w", err)
		}
	}
	if len(suspended) > 0 {
		// Queued retries stay: activate() resumes them.
		if _, err := tx.Exec(ctx, `UPDATE walhook.subscriptions SET active = false, status_message = $2, updated_at = now()
			WHERE id = ANY($1::uuid[]) AND active`, suspended, SuspendedMessage); err != nil {
			return fmt.Errorf("suspend subscriptions: %w", err)
		}
		for _, id := range suspended {
			rc.log.Warn("subscription suspended after consecutive failed attempts", "subscription_id", id, "attempts", p.History)
		}
	}
	// The ring buffer: per touched subscription, find the History-th newest
	// attempt through the (subscription_id, id) index and drop what is older.
	_, err := tx.Exec(ctx, `DELETE FROM walhook.attempts a
		USING (SELECT s.id AS sid,
			(SELECT x.id FROM walhook.attempts x WHERE x.subscription_id = s.id
			 ORDER BY x.id DESC OFFSET $2 - 1 LIMIT 1) AS oldest_kept
			FROM unnest($1::uuid[]) AS s(id)) k
		WHERE a.subscription_id = k.sid AND a.id < k.oldest_kept`, ids, p.History)
	if err != nil {
		return fmt.Errorf("prune attempt history: %w", err)
	}
	return nil
}

// queueRows are first attempts to queue for a retry, as column arrays.
type queueRows struct {
	sub, eventID, event, url, method []string
	dialect                          []string // "" stored as NULL
	eventIDs                         []string // a batch's event ids, comma-joined; "" stored as NULL
	committed                        []*time.Time
	headers                          [][]byte
	body                             [][]byte
	attempt                          []int32
	delayMS                          []int64
	// The order of a request of an ordering: key dialect; NULL otherwise.
	orderKey         []*string
	orderLSN, orderN []*int64
}

func (q *queueRows) add(r *Request, delay time.Duration) {
	q.sub = append(q.sub, r.SubscriptionID)
	q.eventID = append(q.eventID, r.EventID)
	q.event = append(q.event, r.Event)
	q.url = append(q.url, r.URL)
	q.method = append(q.method, methodOf(r))
	q.headers = append(q.headers, storedHeaders(r.Header))
	q.dialect = append(q.dialect, r.Dialect)
	q.eventIDs = append(q.eventIDs, strings.Join(r.EventIDs, ","))
	var c *time.Time
	if !r.Committed.IsZero() {
		t := r.Committed
		c = &t
	}
	q.committed = append(q.committed, c)
	body := r.Body
	if body == nil {
		body = []byte{} // the column is NOT NULL; an empty body is still a body
	}
	q.body = append(q.body, body)
	q.attempt = append(q.attempt, int32(max(r.Attempt, 1)))
	q.delayMS = append(q.delayMS, delay.Milliseconds())
	if r.Order.Key == "" {
		q.orderKey, q.orderLSN, q.orderN = append(q.orderKey, nil), append(q.orderLSN, nil), append(q.orderN, nil)
		return
	}
	k, l, n := r.Order.Key, int64(r.Order.LSN), int64(r.Order.N)
	q.orderKey, q.orderLSN, q.orderN = append(q.orderKey, &k), append(q.orderLSN, &l), append(q.orderN, &n)
}

// dialectOf is the request's dialect for the database: NULL when unknown.
func dialectOf(r *Request) any {
	if r.Dialect == "" {
		return nil
	}
	return r.Dialect
}

func methodOf(r *Request) string {
	if r.Method == "" {
		return http.MethodPost
	}
	return r.Method
}

func attemptRow(r *Request, o Outcome) []any {
	status := "failed"
	if o.Succeeded() {
		status = "succeeded"
	}
	var respStatus any
	if o.Status != 0 {
		respStatus = o.Status
	}
	var errText any
	if o.Err != nil {
		errText = o.Err.Error()
	}
	var excerpt any
	if len(o.Excerpt) > 0 {
		excerpt = validUTF8(o.Excerpt)
	}
	return []any{r.SubscriptionID, r.EventID, r.Event, max(r.Attempt, 1), status, respStatus,
		excerpt, errText, r.URL, methodOf(r), storedHeaders(r.Header), r.Body, int32(o.Duration / time.Millisecond),
		dialectOf(r), r.EventIDs}
}

// newestPerSubscription returns the records of batch to write as attempt
// rows: the newest history of each subscription. The ring buffer would prune
// the older ones right after, so writing them is work for nothing; with one
// busy subscription it cuts a batch of a thousand rows to fifty. Failure
// counts and the queue still see the whole batch.
func newestPerSubscription(batch []record, history int) []record {
	if len(batch) <= history && !slices.ContainsFunc(batch, func(r record) bool { return r.v == verdictQueued }) {
		return batch
	}
	seen := map[string]int{}
	keep := make([]bool, len(batch))
	n := 0
	for i := len(batch) - 1; i >= 0; i-- {
		if batch[i].v == verdictQueued {
			continue
		}
		id := batch[i].r.SubscriptionID
		if seen[id] < history {
			seen[id]++
			keep[i] = true
			n++
		}
	}
	if n == len(batch) {
		return batch
	}
	out := make([]record, 0, n)
	for i, k := range keep {
		if k {
			out = append(out, batch[i])
		}
	}
	return out
}

// insertAttempts writes the batch's attempts with COPY, the fastest way in.
// PostgreSQL refuses COPY into a table with row-level security for a role the
// policies apply to (a non-owner running walhook), so on that refusal the
// recorder switches for good to one multi-row INSERT per batch.
func (rc *recorder) insertAttempts(ctx context.Context, tx pgx.Tx, batch []record) error {
	if !rc.copyRefused.Load() {
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"walhook", "attempts"}, attemptColumns,
			pgx.CopyFromSlice(len(batch), func(i int) ([]any, error) {
				row := attemptRow(batch[i].r, batch[i].o)
				// As a pgtype.UUID: pgx encodes a string into a uuid column
				// only after failing to, building an error for every row.
				var u pgtype.UUID
				if u.Scan(batch[i].r.SubscriptionID) == nil {
					row[0] = u
				}
				return row, nil
			}))
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "0A000" {
			rc.copyRefused.Store(true)
			rc.log.Info("COPY refused under row-level security; recording attempts with INSERT")
		}
		if err != nil {
			return fmt.Errorf("copy attempts: %w", err)
		}
		return nil
	}
	n := len(batch)
	var (
		sub, eventID, event, status, url, method = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		attempt, duration                        = make([]int32, n), make([]int32, n)
		respStatus                               = make([]*int32, n)
		excerpt, errText                         = make([]*string, n), make([]*string, n)
		headers, body                            = make([][]byte, n), make([][]byte, n)
		dialect                                  = make([]*string, n)
		eventIDs                                 = make([]string, n) // comma-joined; "" for NULL
	)
	for i, rec := range batch {
		row := attemptRow(rec.r, rec.o)
		sub[i], eventID[i], event[i] = row[0].(string), row[1].(string), row[2].(string)
		attempt[i] = int32(row[3].(int))
		status[i] = row[4].(string)
		if v, ok := row[5].(int); ok {
			x := int32(v)
			respStatus[i] = &x
		}
		if v, ok := row[6].(string); ok {
			excerpt[i] = &v
		}
		if v, ok := row[7].(string); ok {
			errText[i] = &v
		}
		url[i], method[i] = row[8].(string), row[9].(string)
		headers[i], _ = row[10].([]byte)
		body[i], _ = row[11].([]byte)
		duration[i] = row[12].(int32)
		if v, ok := row[13].(string); ok {
			dialect[i] = &v
		}
		eventIDs[i] = strings.Join(rec.r.EventIDs, ",")
	}
	_, err := tx.Exec(ctx, `INSERT INTO walhook.attempts (subscription_id, event_id, event, attempt, status, response_status,
			response_excerpt, error, target_url, request_method, request_headers, request_body, duration_ms, request_dialect, event_ids)
		SELECT s, e, ev, n, st, rs, x, er, u, m, h, b, d, dl, string_to_array(nullif(ids, ''), ',')
		FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[], $6::int[], $7::text[], $8::text[],
			$9::text[], $10::text[], $11::jsonb[], $12::bytea[], $13::int[], $14::text[], $15::text[])
			AS q(s, e, ev, n, st, rs, x, er, u, m, h, b, d, dl, ids)`,
		sub, eventID, event, attempt, status, respStatus, excerpt, errText, url, method, headers, body, duration, dialect, eventIDs)
	if err != nil {
		return fmt.Errorf("insert attempts: %w", err)
	}
	return nil
}

// storedHeaders keeps the dialect's headers for redelivery, minus anything
// that looks like a credential.
func storedHeaders(h http.Header) []byte {
	if len(h) == 0 {
		return nil
	}
	out := map[string]string{}
	for k, v := range h {
		if isSecretHeader(k) {
			continue
		}
		if len(v) > 0 {
			out[k] = v[0]
		}
	}
	b, _ := json.Marshal(out)
	return b
}

func isSecretHeader(k string) bool {
	switch http.CanonicalHeaderKey(k) {
	case "Authorization", "Proxy-Authorization", "Cookie", "Webhook-Signature", "X-Api-Key":
		return true
	}
	return false
}

// validUTF8 makes a response excerpt storable as text: PostgreSQL refuses
// invalid UTF-8 and NUL bytes, and a receiver may send either.
func validUTF8(b []byte) string {
	s := string(b)
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return strings.ReplaceAll(s, "\x00", "")
}
