package cdc

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/walhook/walhook/internal/change"
)

// Txn is one transaction as it moves through the pipeline: the stream opens it
// at BEGIN, the consumer adds work to it and seals it after COMMIT, workers mark
// that work done.
type Txn struct {
	change.Tx
	tracker     *Tracker
	outstanding atomic.Int64
	sealed      atomic.Bool
	resolved    bool // guarded by tracker.mu
}

// Add records n more units of work that must finish before the transaction
// may be acknowledged. It must be called before Seal.
func (t *Txn) Add(n int) { t.outstanding.Add(int64(n)) }

// Done marks one unit of work finished.
func (t *Txn) Done() {
	if t.outstanding.Add(-1) == 0 && t.sealed.Load() {
		t.tracker.resolve(t)
	}
}

// Seal says the consumer has seen the commit and added all the work there is.
func (t *Txn) Seal() {
	t.sealed.Store(true)
	if t.outstanding.Load() == 0 {
		t.tracker.resolve(t)
	}
}

// Tracker keeps transactions in commit order and computes the LSN that may be
// confirmed to the server.
type Tracker struct {
	// max caps len(pending); the stream waits for room before it opens
	// another transaction. 0 is no cap.
	max int
	// room is signalled (never blocking) when a resolve shrinks pending.
	room chan struct{}

	mu        sync.Mutex
	pending   []*Txn // in commit order; resolved ones are popped from the front
	confirmed pglogrepl.LSN
	// confirmedAt is the commit time of the transaction confirmed ends;
	// zero until one is resolved.
	confirmedAt time.Time
}

// NewTracker starts tracking at the slot's confirmed LSN, holding at most
// maxPending unresolved transactions (0 for no cap).
func NewTracker(start pglogrepl.LSN, maxPending int) *Tracker {
	return &Tracker{confirmed: start, max: maxPending, room: make(chan struct{}, 1)}
}

// full reports whether the pending list is at its cap.
func (tr *Tracker) full() bool {
	if tr.max <= 0 {
		return false
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.pending) >= tr.max
}

// open registers a transaction at BEGIN.
func (tr *Tracker) open(tx change.Tx) *Txn {
	t := &Txn{Tx: tx, tracker: tr}
	tr.mu.Lock()
	tr.pending = append(tr.pending, t)
	tr.mu.Unlock()
	return t
}

// resolve may be called twice for one Txn (Seal and the last Done can race to
// see zero); the flag makes the second call a no-op.
func (tr *Tracker) resolve(t *Txn) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if t.resolved {
		return
	}
	t.resolved = true
	n := 0
	for n < len(tr.pending) && tr.pending[n].resolved {
		if end := tr.pending[n].EndLSN; end > tr.confirmed {
			tr.confirmed, tr.confirmedAt = end, tr.pending[n].CommitTime
		}
		n++
	}
	if n > 0 {
		clear(tr.pending[:n])
		tr.pending = tr.pending[n:]
		select {
		case tr.room <- struct{}{}:
		default:
		}
	}
}

// idle advances the confirmed LSN to pos when nothing is pending: every
// transaction the server sent before pos is resolved, and any still being
// decoded commits after pos, so it will be sent again after a restart.
func (tr *Tracker) idle(pos pglogrepl.LSN) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.pending) == 0 && pos > tr.confirmed {
		tr.confirmed = pos
	}
}

// Confirmed returns the LSN up to which the slot may be acknowledged.
func (tr *Tracker) Confirmed() pglogrepl.LSN {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.confirmed
}

// Pending returns the number of unresolved transactions.
func (tr *Tracker) Pending() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.pending)
}
