package cdc

import "time"

// Observer is told what the stream does, for metrics. Its methods must be
// cheap and safe for concurrent use: they run on the goroutine that owns the
// replication connection.
type Observer interface {
	// Decoded counts n row changes decoded from the stream.
	Decoded(n int)
}

type nopObserver struct{}

func (nopObserver) Decoded(int) {}

// Lag is how far acknowledgement is behind at now: the time since the commit
// of the last acknowledged transaction while transactions wait to be
// acknowledged (the oldest waiting one's commit when none was acknowledged
// since the start), and 0 when every transaction received is acknowledged,
// so an idle database is not reported as lagging.
func (tr *Tracker) Lag(now time.Time) time.Duration {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.pending) == 0 {
		return 0
	}
	since := tr.confirmedAt
	if since.IsZero() {
		since = tr.pending[0].CommitTime
	}
	return max(now.Sub(since), 0)
}
