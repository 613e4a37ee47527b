package deliver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sourcegraph/conc"
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
	// Client overrides the HTTP client (tests of the client itself); nil
	// builds one with NewClient.
	Client *http.Client
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
	Key     []byte
	Attempt int
	// Done is called once the attempt's outcome is durably recorded.
	Done func()
}

// Outcome is what one attempt came to.
type Outcome struct {
	Status   int // HTTP status, 0 when none was received
	Excerpt  []byte
	Err      error
	Duration time.Duration
}

// Succeeded reports a 2xx answer.
func (o Outcome) Succeeded() bool { return o.Err == nil && o.Status >= 200 && o.Status < 300 }

// Worker runs deliveries with bounded concurrency and records their attempts.
type Worker struct {
	cfg    Config
	log    *slog.Logger
	client *http.Client
	rec    *recorder

	slots chan struct{} // global bound
	mu    sync.Mutex
	hosts map[string]chan struct{} // per destination bound
	wg    conc.WaitGroup
}

// New returns a Worker recording attempts in db.
func New(cfg Config, db *pgxpool.Pool, logger *slog.Logger) *Worker {
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxPerHost <= 0 {
		cfg.MaxPerHost = DefaultMaxPerHost
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	client := cfg.Client
	if client == nil {
		client = NewClient(ClientConfig{Timeout: cfg.Timeout, AllowPrivate: cfg.AllowPrivate, MaxPerHost: cfg.MaxPerHost})
	}
	log := logger.With("component", "deliver")
	return &Worker{
		cfg:    cfg,
		log:    log,
		client: client,
		rec:    newRecorder(db, log),
		slots:  make(chan struct{}, cfg.MaxInFlight),
		hosts:  map[string]chan struct{}{},
	}
}

// Run records attempt outcomes until ctx ends. Deliveries still running then
// are not recorded and so not acknowledged.
func (w *Worker) Run(ctx context.Context) error {
	return w.rec.run(ctx)
}

// Submit starts a delivery, blocking while max_in_flight are running: that
// block is the backpressure that pauses reading the stream.
func (w *Worker) Submit(ctx context.Context, r *Request) error {
	select {
	case w.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	w.wg.Go(func() {
		defer func() { <-w.slots }()
		o := w.attempt(ctx, r)
		w.rec.add(ctx, r, o)
	})
	return nil
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

// Wait waits for the deliveries started so far to finish their HTTP attempt.
func (w *Worker) Wait() { w.wg.Wait() }

func (w *Worker) hostSlots(host string) chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.hosts[host]
	if s == nil {
		s = make(chan struct{}, w.cfg.MaxPerHost)
		w.hosts[host] = s
	}
	return s
}

func (w *Worker) attempt(ctx context.Context, r *Request) Outcome {
	start := time.Now()
	u, err := url.Parse(r.URL)
	if err != nil {
		return Outcome{Err: fmt.Errorf("parse target URL: %w", err)}
	}
	if u.User != nil {
		return Outcome{Err: errors.New("target URL carries credentials; refused")}
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !w.cfg.AllowHTTP {
			return Outcome{Err: errors.New("http:// target refused (allow with --allow-http)")}
		}
	default:
		return Outcome{Err: fmt.Errorf("target scheme %q refused", u.Scheme)}
	}
	hs := w.hostSlots(u.Host)
	select {
	case hs <- struct{}{}:
	case <-ctx.Done():
		return Outcome{Err: ctx.Err()}
	}
	defer func() { <-hs }()

	actx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, r.Method, r.URL, bytes.NewReader(r.Body))
	if err != nil {
		return Outcome{Err: fmt.Errorf("build request: %w", err)}
	}
	for k, v := range r.Header {
		req.Header[k] = v
	}
	ts := time.Now().Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", r.UserAgent)
	req.Header.Set("webhook-id", r.EventID)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	if r.Key != nil {
		req.Header.Set("webhook-signature", Sign(r.Key, r.EventID, ts, r.Body))
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return Outcome{Err: err, Duration: time.Since(start)}
	}
	defer resp.Body.Close()
	excerpt, rerr := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes))
	o := Outcome{Status: resp.StatusCode, Duration: time.Since(start)}
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
