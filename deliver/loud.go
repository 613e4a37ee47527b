package deliver

import (
	"errors"
	"sync"
	"time"
)

// failureLog logs failed attempts at WARN — loud, since a failing receiver
// is what an operator must hear about — but at most once per subscription
// per failureLogEvery, with the count since, so that a receiver that is down
// does not flood the log. A 410 and a refused destination are logged every
// time: each ends or never starts a delivery.
type failureLog struct {
	mu   sync.Mutex
	last map[string]*failureCount
}

type failureCount struct {
	at time.Time
	n  int
}

const (
	failureLogEvery = time.Minute
	// maxFailureLog bounds the subscriptions remembered; past it the
	// memory starts afresh, which at worst logs one line more.
	maxFailureLog = 10_000
)

// ErrRefused marks a destination refused before any network: a scheme, a
// credential in the URL, or an address in a private range.
var ErrRefused = errors.New("destination refused")

func (rc *recorder) logOutcome(r *Request, o Outcome, v verdict) {
	if v == verdictSucceeded || v == verdictQueued {
		return
	}
	log := rc.log.With("subscription_id", r.SubscriptionID, "event_id", r.EventID, "event", r.Event, "attempt", max(r.Attempt, 1))
	if o.Status != 0 {
		log = log.With("response_status", o.Status)
	}
	if o.Err != nil {
		log = log.With("err", o.Err)
	}
	switch {
	case v == verdictGone:
		log.Warn("receiver answered 410 Gone: subscription deactivated")
		return
	case errors.Is(o.Err, ErrRefused) || errors.As(o.Err, new(*BlockedAddressError)):
		log.Warn("delivery refused: the destination is not allowed (see --allow-http, --allow-private-targets, --allow-target-cidr)")
		return
	}
	rc.fails.mu.Lock()
	if rc.fails.last == nil || len(rc.fails.last) > maxFailureLog {
		rc.fails.last = map[string]*failureCount{}
	}
	c := rc.fails.last[r.SubscriptionID]
	if c == nil {
		c = &failureCount{}
		rc.fails.last[r.SubscriptionID] = c
	}
	c.n++
	due := c.at.IsZero() || time.Since(c.at) >= failureLogEvery
	n := c.n
	if due {
		c.at, c.n = time.Now(), 0
	}
	rc.fails.mu.Unlock()
	if !due {
		return
	}
	msg := "delivery failed; it will be retried"
	if v == verdictFailed {
		msg = "delivery failed for good: the retry schedule is used up (walhook.redeliver() sends it again)"
	}
	log.Warn(msg, "failures_since_last_log", n)
}
