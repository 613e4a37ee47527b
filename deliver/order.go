package deliver

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Order places a first attempt in its key's sequence, for a dialect with
// ordering: key. The zero Order sends the request in no particular order.
type Order struct {
	// Key names the row: the table and its key columns' values. Empty for
	// an unordered request.
	Key string
	// LSN and N are the change's commit LSN and its position in the
	// transaction: commit order.
	LSN uint64
	N   uint64
}

// chainID is one subscription's row key.
type chainID struct{ sub, key string }

// chain is the state of one subscription's row key. Its requests go out one
// at a time: the head in flight, the rest waiting in commit order. When the
// head fails and is queued for a retry, the key is parked: its later
// requests are queued in walhook.deliveries behind it, where the queue
// claims them one after another in the same order (see claim). The key is
// unparked once nothing of it is left there.
type chain struct {
	busy    bool  // a request of the key is queued or in flight here
	waiting []job // later requests, in commit order
	// parked: the key has deliveries in walhook.deliveries, so later
	// requests must queue behind them.
	parked bool
	// flushing: a goroutine is handing waiting requests to the recorder;
	// only one at a time, so that they reach it in commit order.
	flushing bool
	// gen counts requests queued behind the key, so that an unpark check
	// can tell that one came while it looked.
	gen uint64
	// pending counts requests handed to the recorder to queue and not yet
	// committed: rows the unpark check cannot see yet.
	pending atomic.Int64
}

func (c *chain) idle() bool { return !c.busy && !c.parked && !c.flushing && len(c.waiting) == 0 }

// orderer holds the chains of the keys with requests under way.
type orderer struct {
	mu     sync.Mutex
	chains map[chainID]*chain
	// wanted is closed by the first ordered request: a worker that never
	// sees one (a standby's, or no dialect orders) never loads or checks
	// parked keys. ready is closed once the keys parked by earlier runs
	// are loaded; ordered requests wait for it.
	wantOnce sync.Once
	wanted   chan struct{}
	ready    chan struct{}
}

func newOrderer() *orderer {
	return &orderer{chains: map[chainID]*chain{}, wanted: make(chan struct{}), ready: make(chan struct{})}
}

// submitOrdered sends r, a first attempt with an order key, after the
// earlier requests of its key. The caller holds r's admission.
func (w *Worker) submitOrdered(ctx context.Context, r *Request) error {
	w.order.wantOnce.Do(func() { close(w.order.wanted) })
	select {
	case <-w.order.ready:
	case <-ctx.Done():
		<-w.admit
		return ctx.Err()
	}
	o := w.order
	id := chainID{r.SubscriptionID, r.Order.Key}
	o.mu.Lock()
	c := o.chains[id]
	if c == nil {
		c = &chain{}
		o.chains[id] = c
	}
	switch {
	case c.parked:
		c.waiting = append(c.waiting, job{ctx: ctx, r: r})
		c.gen++
		if c.flushing {
			o.mu.Unlock()
			return nil
		}
		c.flushing = true
		o.mu.Unlock()
		w.flushChain(id, c)
	case c.busy:
		c.waiting = append(c.waiting, job{ctx: ctx, r: r})
		o.mu.Unlock()
	default:
		c.busy = true
		o.mu.Unlock()
		w.enqueue(ctx, r)
	}
	return nil
}

// finishOrdered follows the outcome of the head of a chain: the next
// request of the key goes out, or, when the head will be retried, the key
// parks and its waiting requests are queued behind the head's retry.
func (w *Worker) finishOrdered(ctx context.Context, r *Request, out Outcome) {
	o := w.order
	id := chainID{r.SubscriptionID, r.Order.Key}
	v, _ := w.policy().decide(max(r.Attempt, 1), out, 0, func() float64 { return 0.5 })
	o.mu.Lock()
	c := o.chains[id]
	if c == nil { // cannot happen: the chain lives while its head runs
		o.mu.Unlock()
		w.finish(ctx, r, out)
		return
	}
	if v == verdictRetry {
		c.busy, c.parked, c.flushing = false, true, true
		c.gen++
		o.mu.Unlock()
		// The head reaches the recorder before anything behind it, so its
		// row is committed no later than theirs.
		w.finish(ctx, w.tracked(c, r), out)
		w.flushChain(id, c)
		return
	}
	// Sent, or finished for good: the next request of the key may go.
	var next *job
	if len(c.waiting) > 0 {
		j := c.waiting[0]
		c.waiting[0] = job{}
		c.waiting = c.waiting[1:]
		next = &j
	} else {
		c.busy = false
		if c.idle() {
			delete(o.chains, id)
		}
	}
	o.mu.Unlock()
	w.finish(ctx, r, out)
	if next != nil {
		w.enqueue(next.ctx, next.r)
	}
}

// flushChain hands the waiting requests of a parked key to the recorder, in
// order, to be queued behind the key's earlier deliveries. The caller set
// c.flushing.
func (w *Worker) flushChain(id chainID, c *chain) {
	o := w.order
	for {
		o.mu.Lock()
		if len(c.waiting) == 0 {
			c.flushing = false
			o.mu.Unlock()
			return
		}
		jobs := c.waiting
		c.waiting = nil
		o.mu.Unlock()
		for _, j := range jobs {
			w.finish(j.ctx, w.tracked(c, j.r), Outcome{queue: true})
		}
	}
}

// tracked counts r as pending on c until the recorder committed it.
func (w *Worker) tracked(c *chain, r *Request) *Request {
	c.pending.Add(1)
	done := r.Done
	r.Done = func() {
		c.pending.Add(-1)
		if done != nil {
			done()
		}
	}
	return r
}

// policy is the retry policy the recorder decides by.
func (w *Worker) policy() RetryPolicy {
	if w.rec == nil {
		return RetryPolicy{}.withDefaults()
	}
	return w.rec.retryPolicy()
}

// unparkEvery is how often parked keys are checked for an empty queue.
const unparkEvery = 100 * time.Millisecond

// maxUnparkCheck bounds the keys one check looks up.
const maxUnparkCheck = 1000

// runOrder, once an ordered request came, loads the keys that earlier runs
// left parked, then unparks keys whose queued deliveries are all finished,
// until ctx ends.
func (w *Worker) runOrder(ctx context.Context) {
	select {
	case <-w.order.wanted:
	case <-ctx.Done():
		return
	}
	backoff := 100 * time.Millisecond
	for {
		err := w.loadParked(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		// Ordered requests wait meanwhile: sending one before knowing what
		// of its key is queued could overtake it.
		w.log.Warn("load keys with queued deliveries; retrying", "err", err, "backoff", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(backoff*2, 5*time.Second)
	}
	close(w.order.ready)
	t := time.NewTicker(unparkEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := w.unpark(ctx); err != nil && ctx.Err() == nil {
				// Not fatal: the keys stay parked, which only sends their
				// events through the queue, and the next check tries again.
				w.log.Warn("check parked keys", "err", err)
			}
		case <-ctx.Done():
			return
		}
	}
}

// loadParked parks every key with a delivery in walhook.deliveries, so that
// new events of it queue behind what a previous run left there.
func (w *Worker) loadParked(ctx context.Context) error {
	o := w.order
	o.mu.Lock()
	clear(o.chains) // a retried load starts afresh
	o.mu.Unlock()
	rows, err := w.rec.db.Query(ctx, `SELECT DISTINCT subscription_id::text, order_key
		FROM walhook.deliveries WHERE order_key IS NOT NULL`)
	if err != nil {
		return fmt.Errorf("load keys with queued deliveries: %w", err)
	}
	var id chainID
	_, err = pgx.ForEachRow(rows, []any{&id.sub, &id.key}, func() error {
		o.mu.Lock()
		o.chains[id] = &chain{parked: true}
		o.mu.Unlock()
		return nil
	})
	if err != nil {
		return fmt.Errorf("load keys with queued deliveries: %w", err)
	}
	return nil
}

// unpark lets keys whose queued deliveries are all finished send directly
// again. A key is unparked only if nothing was queued behind it from before
// the look-up began until after it ended: a delivery committed before the
// look-up is seen by it, and one queued after it makes the check void.
func (w *Worker) unpark(ctx context.Context) error {
	o := w.order
	type cand struct {
		id  chainID
		gen uint64
	}
	var cands []cand
	o.mu.Lock()
	for id, c := range o.chains {
		if c.parked && !c.flushing && len(c.waiting) == 0 && c.pending.Load() == 0 {
			cands = append(cands, cand{id, c.gen})
			if len(cands) == maxUnparkCheck {
				break
			}
		}
	}
	o.mu.Unlock()
	if len(cands) == 0 {
		return nil
	}
	subs, keys := make([]string, len(cands)), make([]string, len(cands))
	for i, c := range cands {
		subs[i], keys[i] = c.id.sub, c.id.key
	}
	rows, err := w.rec.db.Query(ctx, `SELECT k.s::text, k.k FROM unnest($1::uuid[], $2::text[]) AS k(s, k)
		WHERE EXISTS (SELECT 1 FROM walhook.deliveries d WHERE d.subscription_id = k.s AND d.order_key = k.k)`, subs, keys)
	if err != nil {
		return fmt.Errorf("look up parked keys: %w", err)
	}
	still := map[chainID]bool{}
	var id chainID
	if _, err := pgx.ForEachRow(rows, []any{&id.sub, &id.key}, func() error {
		still[id] = true
		return nil
	}); err != nil {
		return fmt.Errorf("look up parked keys: %w", err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, cd := range cands {
		c := o.chains[cd.id]
		if c == nil || still[cd.id] || c.gen != cd.gen || c.pending.Load() != 0 || c.flushing || len(c.waiting) > 0 {
			continue
		}
		c.parked = false
		if c.idle() {
			delete(o.chains, cd.id)
		}
	}
	return nil
}

// Parked reports how many keys have deliveries waiting in the queue, for
// metrics and tests.
func (w *Worker) Parked() int {
	o := w.order
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, c := range o.chains {
		if c.parked {
			n++
		}
	}
	return n
}
