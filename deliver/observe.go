package deliver

import "time"

// Outcomes an Observer is told of, one per recorded attempt.
const (
	OutcomeSucceeded   = "succeeded"   // 2xx
	OutcomeRetried     = "retried"     // failed; another attempt is queued
	OutcomeFailed      = "failed"      // failed; the retry schedule is used up
	OutcomeDeactivated = "deactivated" // 410 Gone: the subscription was deactivated
	// OutcomeQueued: no attempt; queued in walhook.deliveries, behind its
	// row key's retry (ordering: key) or spilled for any process to send.
	OutcomeQueued = "queued"
)

// Observer is told what the worker does, for metrics. Its methods must be
// cheap and safe for concurrent use.
type Observer interface {
	// Recorded is called once per attempt after its outcome is durably
	// recorded, with one of the Outcome constants.
	Recorded(outcome string)
	// Latency is called for each 2xx answer to a request whose commit time
	// is known, with the time from the commit to the answer.
	Latency(d time.Duration)
}

type nopObserver struct{}

func (nopObserver) Recorded(string)       {}
func (nopObserver) Latency(time.Duration) {}

func (rc *recorder) observe(v verdict) {
	if rc.obs == nil {
		return
	}
	switch v {
	case verdictSucceeded:
		rc.obs.Recorded(OutcomeSucceeded)
	case verdictRetry:
		rc.obs.Recorded(OutcomeRetried)
	case verdictFailed:
		rc.obs.Recorded(OutcomeFailed)
	case verdictGone:
		rc.obs.Recorded(OutcomeDeactivated)
	case verdictQueued:
		rc.obs.Recorded(OutcomeQueued)
	}
}

// Load is one destination's delivery load at a moment.
type Load struct {
	Host     string // host:port
	InFlight int    // HTTP requests under way
	Queued   int    // waiting for one of the destination's places
}

// Load returns the load of every destination with work; idle ones are absent.
func (w *Worker) Load() []Load {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]Load, 0, len(w.hosts))
	for dest, h := range w.hosts {
		out = append(out, Load{Host: dest, InFlight: int(h.inflight.Load()), Queued: len(h.jobs)})
	}
	return out
}
