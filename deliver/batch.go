package deliver

import (
	"context"
	"crypto/sha256"
	"slices"
	"sync"
	"time"

	"github.com/walhook/walhook/internal/stage"
	"github.com/walhook/walhook/mapping"
)

// BatchEvent is the event name a batch request is recorded and queued
// under; its event_ids name the events it carries.
const BatchEvent = "batch"

// batchOverhead is the length of a batch document without its events:
// {"id":"<36>","events":[]}.
const batchOverhead = len(`{"id":"","events":[]}`) + 36

// batcher collects first attempts of batching dialects per subscription,
// target, dialect and signing key (the coalescing key), and hands each
// batch to its destination's queue as one request when it reaches
// MaxEvents or MaxBytes, when MaxWait has passed since its first event, or
// when the worker is drained.
//
// A batch is enqueued while mu is held, so batches of one key enter their
// destination's queue in the order of their first event, and a batch's
// events are in the order they were submitted (commit order). The members'
// Done run only when the batch's outcome is recorded: until then their
// changes are not acknowledged.
type batcher struct {
	w  *Worker
	mu sync.Mutex
	// open are the batches collecting, by coalescing key; guarded by mu.
	open map[string]*openBatch
}

type openBatch struct {
	key   string
	ctx   context.Context // the first member's
	reqs  []*Request
	size  int // of the batch document so far
	timer *time.Timer
}

func newBatcher(w *Worker) *batcher {
	return &batcher{w: w, open: map[string]*openBatch{}}
}

func batchKey(r *Request) string {
	return r.SubscriptionID + "\x00" + r.URL + "\x00" + r.Dialect + "\x00" + string(r.Key) + "\x00" + string(r.PrevKey)
}

// add puts an admitted request in its batch.
func (b *batcher) add(ctx context.Context, r *Request) {
	key := batchKey(r)
	lim := r.Batch
	b.mu.Lock()
	defer b.mu.Unlock()
	ob := b.open[key]
	if ob != nil && ob.size+1+len(r.Body) > lim.MaxBytes {
		// r does not fit: what is collected goes first. An event larger than
		// MaxBytes on its own goes alone, in a batch of one.
		b.flushLocked(ob)
		ob = nil
	}
	if ob == nil {
		ob = &openBatch{key: key, ctx: ctx, size: batchOverhead - 1}
		b.open[key] = ob
		ob.timer = time.AfterFunc(lim.MaxWait, func() {
			// The timer's goroutine is the runtime's: a panic in it fails the
			// worker like one in a delivery goroutine.
			if err := stage.Run("deliver batch timer", func() error { b.expire(ob); return nil }); err != nil {
				b.w.fail(err)
			}
		})
	}
	ob.reqs = append(ob.reqs, r)
	ob.size += 1 + len(r.Body)
	if len(ob.reqs) >= lim.MaxEvents || ob.size >= lim.MaxBytes {
		b.flushLocked(ob)
	}
}

// expire sends ob when its MaxWait is up, unless it was sent already.
func (b *batcher) expire(ob *openBatch) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.open[ob.key] == ob {
		b.flushLocked(ob)
	}
}

// flushAll sends every batch still collecting: a drain does not wait for
// MaxWait.
func (b *batcher) flushAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	// In the order the batches were opened would need a list; batches of
	// different keys have no order between them, so map order is fine.
	for _, ob := range b.open {
		b.flushLocked(ob)
	}
}

// abandon drops the batches collecting without sending them or calling
// their members' Done.
func (b *batcher) abandon() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for key, ob := range b.open {
		ob.timer.Stop()
		delete(b.open, key)
	}
}

func (b *batcher) flushLocked(ob *openBatch) {
	delete(b.open, ob.key)
	ob.timer.Stop()
	b.w.enqueue(ob.ctx, batchRequest(ob.reqs))
}

// batchRequest builds the one request that carries reqs, all of one
// coalescing key, in order.
func batchRequest(reqs []*Request) *Request {
	first := reqs[0]
	ids := make([]string, len(reqs))
	size := batchOverhead
	for i, r := range reqs {
		ids[i] = r.EventID
		size += len(r.Body) + 1
	}
	id := BatchID(ids)
	body := make([]byte, 0, size)
	body = append(body, `{"id":"`...)
	body = append(body, id...)
	body = append(body, `","events":[`...)
	for i, r := range reqs {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, r.Body...)
	}
	body = append(body, "]}"...)
	members := slices.Clone(reqs)
	return &Request{
		SubscriptionID: first.SubscriptionID,
		EventID:        id,
		Event:          BatchEvent,
		EventIDs:       ids,
		URL:            first.URL,
		Method:         first.Method,
		UserAgent:      first.UserAgent,
		Header:         first.Header,
		Body:           body,
		Key:            first.Key,
		PrevKey:        first.PrevKey,
		Dialect:        first.Dialect,
		RateLimit:      first.RateLimit,
		Attempt:        1,
		Committed:      first.Committed,
		members:        members,
		Done: func() {
			for _, m := range members {
				if m.Done != nil {
					m.Done()
				}
			}
		},
	}
}

// BatchID is the id of a batch of the events with these ids: a UUIDv8 from
// the SHA-256 of the sorted ids, so the same events make the same batch id
// in any order, in any process, after any restart.
func BatchID(eventIDs []string) string {
	sorted := slices.Clone(eventIDs)
	slices.Sort(sorted)
	h := sha256.New()
	h.Write([]byte("walhook batch\x00"))
	for _, id := range sorted {
		h.Write([]byte(id))
		h.Write([]byte{0})
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return mapping.UUIDv8(sum)
}
