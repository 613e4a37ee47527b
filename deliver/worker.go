package deliver

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sourcegraph/conc"
	"github.com/walhook/walhook/internal/stage"
	"golang.org/x/time/rate"
)

// Defaults applied by New.
const (
	DefaultMaxInFlight  = 256
	DefaultMaxPerHost   = 16
	DefaultTimeout      = 30 * time.Second
	DefaultExcerptBytes = 1024
	// MaxResponseBytes caps what is read of a response; the rest is discarded
	// by closing the connection.
	MaxResponseBytes = 64 << 10
)

// Config configures a Worker.
type Config struct {
	MaxInFlight  int
	MaxPerHost   int
	Timeout      time.Duration
	AllowHTTP    bool
	AllowPrivate bool
	// AllowCIDRs are destination ranges allowed even when AllowPrivate is
	// false; see ClientConfig.AllowCIDRs.
	AllowCIDRs []netip.Prefix
	// MaxQueued bounds deliveries submitted and not yet recorded, across all
	// destinations; Submit blocks beyond it. Zero means MaxInFlight *
	// DefaultQueueFactor.
	MaxQueued int
	// Client overrides the HTTP client (tests of the client itself); nil
	// builds one with NewClient.
	Client *http.Client
	// Observer is told of recorded outcomes, for metrics; nil for none.
	Observer Observer
	// Spill, when it returns true, sends first attempts to a destination
	// whose queue here already holds MaxPerHost waiting requests to
	// walhook.deliveries instead, where every process sharing the database
	// claims work: other processes add their delivery capacity. Nil never
	// spills.
	Spill func() bool
}

// Request is one delivery of one event to one subscription.
type Request struct {
	SubscriptionID string
	EventID        string
	Event          string
	URL            string
	Method         string
	UserAgent      string
	Header         http.Header // the dialect's extra headers; not modified
	Body           []byte
	// Key is the signing key decoded from the subscription's secret; nil
	// sends no signature.
	Key []byte
	// Dialect names the dialect the request was built by; a retry takes the
	// dialect's headers from the running config, since the stored ones leave
	// credentials out.
	Dialect string
	// RateLimit caps requests per second to this request's URL (the
	// dialect's rate_limit); 0 is no cap.
	RateLimit float64
	// PrevKey is the key of the secret walhook.rotate_secret() replaced,
	// while it still signs alongside Key; nil otherwise.
	PrevKey []byte
	Attempt int
	// Committed is the commit time of the change, when known: it times
	// commit→2xx for metrics.
	Committed time.Time
	// Done is called once the attempt's outcome is durably recorded.
	Done func()
	// Order, set on a first attempt of a dialect with ordering: key, sends
	// it after every earlier event of its subscription and row key, and
	// holds back the later ones while it is retried. Queued deliveries
	// carry their order in walhook.deliveries instead.
	Order Order
	// NoSpill keeps the request in this process when the destination is
	// busy, even while Spill says other processes share the work: a
	// backfill's rows, so that a large backfill cannot fill the shared
	// queue ahead of live events to the same destination.
	NoSpill bool
	// fromQueue marks a request claimed from walhook.deliveries: it never
	// spills back.
	fromQueue bool
	// Batch, set on a first attempt, lets the worker send it with other
	// events to the same subscription in one request (the dialect's batch);
	// nil sends it alone.
	Batch *Batch
	// EventIDs are the ids of the events a batch request carries, in commit
	// order; nil for a request of one event.
	EventIDs []string
	// members are the requests a batch request carries: each holds an
	// admission, and each one's Done is called when the batch's is.
	members []*Request
}

// Outcome is what one attempt came to.
type Outcome struct {
	Status   int // HTTP status, 0 when none was received
	Excerpt  []byte
	Err      error
	Duration time.Duration
	// RetryAfter is what the receiver's Retry-After header asked for; 0 when
	// it sent none.
	RetryAfter time.Duration
	// queue: no attempt was made; the request goes to walhook.deliveries,
	// behind an earlier delivery of its row key that is being retried, or
	// spilled there for any process to send.
	queue bool
}

// Succeeded reports a 2xx answer.
func (o Outcome) Succeeded() bool { return o.Err == nil && o.Status >= 200 && o.Status < 300 }

// jsonContentType is every request's Content-Type; net/http only reads it.
var jsonContentType = []string{"application/json"}

// Worker runs deliveries with bounded concurrency and records their attempts.
//
// Each destination (host:port) has its own FIFO queue and at most
// MaxPerHost deliveries in flight. A delivery takes a global slot (of
// MaxInFlight) only once its destination has room for it, so a slow
// receiver holds at most MaxPerHost global slots and its backlog waits in
// its own queue, holding none. Memory is bounded by MaxQueued: Submit
// blocks while that many deliveries are queued, in flight or unrecorded.
//
// Lock order: batches.mu, then mu; no channel operation that can block is
// done while holding either.
type Worker struct {
	cfg    Config
	log    *slog.Logger
	client *http.Client
	rec    *recorder
	// record hands an outcome on to be written; the recorder calls Done.
	// Tests replace it to run without a database.
	record func(ctx context.Context, r *Request, o Outcome)

	admit chan struct{} // bounds submitted and not yet recorded (MaxQueued)
	slots chan struct{} // bounds requests in flight (MaxInFlight)

	mu    sync.Mutex
	hosts map[string]*hostQueue // guarded by mu; an idle host is removed
	// limiters pace target URLs with a rate limit; guarded by mu.
	limiters map[string]*rate.Limiter

	wg conc.WaitGroup

	// batches collects the requests of batching dialects.
	batches *batcher

	// order sends the requests of each row key one after another.
	order *orderer

	// failed is closed when a delivery goroutine panicked; failure holds
	// the panic. Run returns it, which stops the pipeline that owns the
	// worker: the request that panicked is never recorded, so its change
	// is not acknowledged and is delivered after the restart.
	failOnce sync.Once
	failed   chan struct{}
	failure  error
}

// hostQueue is one destination's backlog. active counts runners, each of
// which owns one of the destination's MaxPerHost places.
type hostQueue struct {
	jobs     []job
	active   int
	inflight atomic.Int32 // requests under way, for Load
}

// job is a submitted delivery with the context it was submitted under.
type job struct {
	ctx context.Context
	r   *Request
}

// DefaultQueueFactor is MaxQueued as a multiple of MaxInFlight.
const DefaultQueueFactor = 4

// New returns a Worker recording attempts in db.
func New(cfg Config, db *pgxpool.Pool, logger *slog.Logger) *Worker {
	w := newWorker(cfg, logger)
	w.rec = newRecorder(db, w.log)
	w.rec.obs = w.cfg.Observer
	w.record = w.rec.add
	return w
}

// newWorker applies defaults and builds everything but the recorder.
func newWorker(cfg Config, logger *slog.Logger) *Worker {
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxPerHost <= 0 {
		cfg.MaxPerHost = DefaultMaxPerHost
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxQueued <= 0 {
		cfg.MaxQueued = cfg.MaxInFlight * DefaultQueueFactor
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	client := cfg.Client
	if client == nil {
		client = NewClient(ClientConfig{Timeout: cfg.Timeout, AllowPrivate: cfg.AllowPrivate,
			AllowCIDRs: cfg.AllowCIDRs, MaxPerHost: cfg.MaxPerHost})
	}
	w := &Worker{
		cfg:      cfg,
		log:      logger.With("component", "deliver"),
		client:   client,
		admit:    make(chan struct{}, cfg.MaxQueued),
		slots:    make(chan struct{}, cfg.MaxInFlight),
		hosts:    map[string]*hostQueue{},
		limiters: map[string]*rate.Limiter{},
		failed:   make(chan struct{}),
	}
	w.batches = newBatcher(w)
	w.order = newOrderer()
	return w
}

// goSafe runs fn on a goroutine the worker waits for; a panic in it fails
// the worker instead of crashing the process or hiding until Wait.
func (w *Worker) goSafe(name string, fn func()) {
	w.wg.Go(func() {
		if err := stage.Run(name, func() error { fn(); return nil }); err != nil {
			w.fail(err)
		}
	})
}

// fail makes Run return err, a panic of a delivery goroutine.
func (w *Worker) fail(err error) {
	w.failOnce.Do(func() {
		w.failure = err
		close(w.failed)
	})
}

// Run records attempt outcomes until ctx ends or a delivery goroutine
// panics (then it returns the panic as a *stage.PanicError). Deliveries
// still running then are not recorded and so not acknowledged.
func (w *Worker) Run(ctx context.Context) error {
	// Batches still collecting when recording stops (a hard stop: a drain
	// flushed them before) are dropped unsent: their events are not
	// acknowledged and come back after the restart.
	defer w.batches.abandon()
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var watch conc.WaitGroup
	defer watch.Wait()
	done := make(chan struct{})
	defer close(done)
	watch.Go(func() {
		select {
		case <-w.failed:
			cancel(w.failure)
		case <-done:
		}
	})
	watch.Go(func() { w.runOrder(rctx) })
	err := w.rec.run(rctx)
	if cause := context.Cause(rctx); stage.IsPanic(cause) {
		return cause
	}
	return err
}

// Submit queues a delivery, blocking while MaxQueued are queued or running:
// that block is the backpressure that pauses reading the stream.
func (w *Worker) Submit(ctx context.Context, r *Request) error {
	select {
	case w.admit <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if r.Batch != nil && r.Attempt <= 1 {
		w.batches.add(ctx, r)
		return nil
	}
	if r.Order.Key != "" && r.Attempt <= 1 {
		return w.submitOrdered(ctx, r)
	}
	w.enqueue(ctx, r)
	return nil
}

// enqueue puts an admitted request in its destination's queue.
func (w *Worker) enqueue(ctx context.Context, r *Request) {
	_, dest, err := w.target(r.URL)
	if err != nil {
		// Refused before any network: no destination queue to wait in.
		w.goSafe("deliver refused", func() { w.complete(ctx, r, Outcome{Err: err}) })
		return
	}
	w.mu.Lock()
	h := w.hosts[dest]
	if h == nil {
		h = &hostQueue{}
		w.hosts[dest] = h
	}
	if len(h.jobs) >= w.cfg.MaxPerHost && w.spillable(r) {
		w.mu.Unlock()
		// Recorded as queued, due now: the retry queue of whichever
		// process has room sends it, this one's included.
		w.finish(ctx, r, Outcome{queue: true})
		return
	}
	h.jobs = append(h.jobs, job{ctx: ctx, r: r})
	start := h.active < w.cfg.MaxPerHost
	if start {
		h.active++
	}
	w.mu.Unlock()
	if start {
		w.goSafe("deliver "+dest, func() { w.runHost(dest, h) })
	}
}

// spillable reports whether r may go to the shared queue instead of
// waiting here: a first attempt of one event, unordered, while Spill says
// other processes share the work.
func (w *Worker) spillable(r *Request) bool {
	return w.cfg.Spill != nil && !r.fromQueue && !r.NoSpill && r.Attempt <= 1 && r.Order.Key == "" && r.members == nil &&
		r.EventIDs == nil && w.cfg.Spill()
}

// waiting counts the requests queued here for a destination's place.
func (w *Worker) waiting() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, h := range w.hosts {
		n += len(h.jobs)
	}
	return n
}

// runHost delivers dest's queue in order until it is empty, holding one of
// the destination's places throughout and a global slot only per request.
func (w *Worker) runHost(dest string, h *hostQueue) {
	for {
		w.mu.Lock()
		if len(h.jobs) == 0 {
			h.active--
			if h.active == 0 {
				delete(w.hosts, dest)
			}
			w.mu.Unlock()
			return
		}
		j := h.jobs[0]
		h.jobs[0] = job{}
		h.jobs = h.jobs[1:]
		w.mu.Unlock()

		var o Outcome
		if err := w.pace(j.ctx, j.r); err != nil {
			w.complete(j.ctx, j.r, Outcome{Err: err})
			continue
		}
		select {
		case w.slots <- struct{}{}:
			h.inflight.Add(1)
			o = w.attempt(j.ctx, j.r)
			h.inflight.Add(-1)
			<-w.slots
		case <-j.ctx.Done():
			o = Outcome{Err: j.ctx.Err()}
		}
		w.complete(j.ctx, j.r, o)
	}
}

// maxLimiters bounds the per-URL rate limiters kept; past it they start
// afresh, which at worst lets one burst through.
const maxLimiters = 10_000

// pace waits until r's target URL may take another request under its rate
// limit. It holds the destination's place meanwhile, not a global slot.
func (w *Worker) pace(ctx context.Context, r *Request) error {
	if r.RateLimit <= 0 {
		return nil
	}
	w.mu.Lock()
	lim := w.limiters[r.URL]
	if lim == nil || lim.Limit() != rate.Limit(r.RateLimit) {
		if len(w.limiters) >= maxLimiters {
			clear(w.limiters)
		}
		lim = rate.NewLimiter(rate.Limit(r.RateLimit), max(1, int(r.RateLimit)))
		w.limiters[r.URL] = lim
	}
	w.mu.Unlock()
	return lim.Wait(ctx)
}

// complete follows an attempt's outcome: an ordered request's key moves on,
// and the outcome is recorded.
func (w *Worker) complete(ctx context.Context, r *Request, o Outcome) {
	if r.Order.Key != "" && r.Attempt <= 1 {
		w.finishOrdered(ctx, r, o)
		return
	}
	w.finish(ctx, r, o)
}

// finish hands the outcome on and gives back the delivery's admission.
func (w *Worker) finish(ctx context.Context, r *Request, o Outcome) {
	defer func() {
		for range max(len(r.members), 1) {
			<-w.admit
		}
	}()
	if o.Succeeded() && !r.Committed.IsZero() {
		w.cfg.Observer.Latency(time.Since(r.Committed))
	}
	w.record(ctx, r, o)
}

// Flush waits until every outcome handed to the recorder is written, or ctx
// ends. Called after Wait, during a drain.
func (w *Worker) Flush(ctx context.Context) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for w.rec.unwritten.Load() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Wait sends the batches still collecting, then waits for the deliveries
// submitted so far to finish their HTTP attempt and be handed to the
// recorder.
func (w *Worker) Wait() {
	w.batches.flushAll()
	w.wg.Wait()
}

// target checks a target URL and returns it with its destination key,
// host:port with the scheme's default port made explicit, so that
// https://a.example and https://a.example:443 share one queue.
func (w *Worker) target(raw string) (*url.URL, string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, "", fmt.Errorf("parse target URL: %w", err)
	}
	if u.User != nil {
		return nil, "", fmt.Errorf("%w: the target URL carries credentials", ErrRefused)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !w.cfg.AllowHTTP {
			return nil, "", fmt.Errorf("%w: http:// target (allow with --allow-http)", ErrRefused)
		}
	default:
		return nil, "", fmt.Errorf("%w: target scheme %q", ErrRefused, u.Scheme)
	}
	if u.Hostname() == "" {
		return nil, "", fmt.Errorf("%w: the target URL has no host", ErrRefused)
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return u, net.JoinHostPort(strings.ToLower(u.Hostname()), port), nil
}

// attempt makes one HTTP request for r; the caller holds a global slot and
// one of the destination's places.
func (w *Worker) attempt(ctx context.Context, r *Request) Outcome {
	start := time.Now() // enqueue checked the target
	actx := ctx
	if w.client.Timeout <= 0 {
		// A client of the caller's without a timeout of its own: the
		// attempt is bounded here instead (NewClient's has one, which is
		// the one timer per request it needs).
		var cancel context.CancelFunc
		actx, cancel = context.WithTimeout(ctx, w.cfg.Timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(actx, r.Method, r.URL, bytes.NewReader(r.Body))
	if err != nil {
		return Outcome{Err: fmt.Errorf("build request: %w", err)}
	}
	for k, v := range r.Header {
		req.Header[k] = v
	}
	ts := time.Now().Unix()
	// Keys in canonical form, set directly: Header.Set would canonicalise
	// each on every request.
	h := req.Header
	h["Content-Type"] = jsonContentType
	h["User-Agent"] = []string{r.UserAgent}
	h["Webhook-Id"] = []string{r.EventID}
	h["Webhook-Timestamp"] = []string{strconv.FormatInt(ts, 10)}
	// The subscription id lets a receiver with several subscriptions pick
	// the secret to verify with before it trusts the body.
	h["Webhook-Subscription"] = []string{r.SubscriptionID}
	if r.Key != nil {
		sig := Sign(r.Key, r.EventID, ts, r.Body)
		if r.PrevKey != nil {
			// During a rotation both secrets sign, space-separated, so a
			// receiver verifying with either one accepts the request.
			sig += " " + Sign(r.PrevKey, r.EventID, ts, r.Body)
		}
		h["Webhook-Signature"] = []string{sig}
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return Outcome{Err: err, Duration: time.Since(start)}
	}
	defer resp.Body.Close()
	excerpt, rerr := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes))
	o := Outcome{Status: resp.StatusCode, Duration: time.Since(start),
		RetryAfter: ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now())}
	if len(excerpt) > DefaultExcerptBytes {
		excerpt = excerpt[:DefaultExcerptBytes]
	}
	o.Excerpt = excerpt
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		o.Err = fmt.Errorf("%w: %d to %q", ErrRedirect, resp.StatusCode, resp.Header.Get("Location"))
	case resp.StatusCode >= 200 && resp.StatusCode < 300 && rerr != nil:
		// The receiver said yes; a broken body after that does not undo it.
	case rerr != nil:
		o.Err = fmt.Errorf("read response: %w", rerr)
	}
	return o
}
