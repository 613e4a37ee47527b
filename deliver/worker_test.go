package deliver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gatedServer holds every request until release is called, so "slow" means
// slower than anything else in the test without the test depending on how
// slow the machine is.
type gatedServer struct {
	*httptest.Server
	release  func()
	started  atomic.Int64
	inFlight atomic.Int64
	maxSeen  atomic.Int64
}

func newGatedServer(tb testing.TB) *gatedServer {
	tb.Helper()
	gate := make(chan struct{})
	var once sync.Once
	g := &gatedServer{release: func() { once.Do(func() { close(gate) }) }}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.started.Add(1)
		n := g.inFlight.Add(1)
		defer g.inFlight.Add(-1)
		for {
			m := g.maxSeen.Load()
			if n <= m || g.maxSeen.CompareAndSwap(m, n) {
				break
			}
		}
		select {
		case <-gate:
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	tb.Cleanup(g.Close)
	return g
}

func newFastServer(tb testing.TB) *httptest.Server {
	tb.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	tb.Cleanup(srv.Close)
	return srv
}

// waitFor waits for ch to close, failing the test after a generous deadline
// that exists only so a deadlock fails instead of hanging.
func waitFor(tb testing.TB, ch <-chan struct{}, what string) {
	tb.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		tb.Fatalf("timed out waiting for %s", what)
	}
}

// TestWorkerSlowReceiverIsolated: a receiver that does not answer must
// delay only its own deliveries, even when its backlog exceeds MaxInFlight
// and it was submitted first.
func TestWorkerSlowReceiverIsolated(t *testing.T) {
	t.Parallel()
	const (
		slowN = 8
		fastN = 20
	)
	slow := newGatedServer(t)
	fast := newFastServer(t)

	var (
		mu            sync.Mutex
		fastDone      int
		slowDone      int
		slowAtFastEnd = -1
	)
	allFast := make(chan struct{})
	allDone := make(chan struct{})
	w := newTestWorker(t, Config{MaxInFlight: 4, MaxPerHost: 2, AllowHTTP: true, AllowPrivate: true, Timeout: time.Minute},
		func(r *Request, o Outcome) {
			mu.Lock()
			defer mu.Unlock()
			if !o.Succeeded() {
				t.Errorf("delivery %s: %+v, want success", r.EventID, o)
			}
			if strings.HasPrefix(r.URL, fast.URL) {
				fastDone++
				if fastDone == fastN {
					slowAtFastEnd = slowDone
					close(allFast)
				}
			} else {
				slowDone++
			}
			if fastDone+slowDone == slowN+fastN {
				close(allDone)
			}
		})
	t.Cleanup(slow.release) // runs before the worker's Wait

	// The deadline only turns a Submit stuck behind the slow receiver into
	// a failure instead of a hang.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for i := range slowN {
		if err := w.Submit(ctx, &Request{URL: slow.URL, Method: http.MethodPost, EventID: fmt.Sprintf("slow_%d", i)}); err != nil {
			t.Fatalf("Submit(slow %d) = %v", i, err)
		}
	}
	// More than MaxQueued in all: Submit must block only until fast
	// deliveries make room, never on the slow receiver.
	for i := range fastN {
		if err := w.Submit(ctx, &Request{URL: fast.URL, Method: http.MethodPost, EventID: fmt.Sprintf("fast_%d", i)}); err != nil {
			t.Fatalf("Submit(fast %d) = %v", i, err)
		}
	}
	waitFor(t, allFast, "the fast deliveries")

	mu.Lock()
	got := slowAtFastEnd
	mu.Unlock()
	if got != 0 {
		t.Fatalf("slow deliveries finished before the last fast one = %d, want 0", got)
	}
	if n := slow.started.Load(); n > 2 {
		t.Fatalf("slow receiver got %d requests while blocked, want at most MaxPerHost (2)", n)
	}

	slow.release()
	waitFor(t, allDone, "the slow deliveries")
	if n := slow.maxSeen.Load(); n > 2 {
		t.Fatalf("slow receiver saw %d concurrent requests, want at most MaxPerHost (2)", n)
	}
	if n := slow.started.Load(); n != slowN {
		t.Fatalf("slow receiver got %d requests, want %d", n, slowN)
	}
}

// TestWorkerHostFIFO: one destination's deliveries go out in submission order.
func TestWorkerHostFIFO(t *testing.T) {
	t.Parallel()
	const n = 20
	srv := newFastServer(t)
	var (
		mu  sync.Mutex
		got []string
	)
	w := newTestWorker(t, Config{MaxInFlight: 4, MaxPerHost: 1, AllowHTTP: true, AllowPrivate: true}, func(r *Request, _ Outcome) {
		mu.Lock()
		got = append(got, r.EventID)
		mu.Unlock()
	})
	var want []string
	for i := range n {
		id := fmt.Sprintf("evt_%02d", i)
		want = append(want, id)
		if err := w.Submit(t.Context(), &Request{URL: srv.URL, Method: http.MethodPost, EventID: id}); err != nil {
			t.Fatalf("Submit(%s) = %v", id, err)
		}
	}
	w.Wait()
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("recorded order = %v, want %v", got, want)
	}
}

// TestWorkerSubmitBackpressure: Submit blocks once MaxQueued deliveries are
// queued or in flight, and gives up with ctx.
func TestWorkerSubmitBackpressure(t *testing.T) {
	t.Parallel()
	slow := newGatedServer(t)
	w := newTestWorker(t, Config{MaxInFlight: 2, MaxPerHost: 1, MaxQueued: 3, AllowHTTP: true, AllowPrivate: true}, nil)
	t.Cleanup(slow.release)
	for i := range 3 {
		if err := w.Submit(t.Context(), &Request{URL: slow.URL, Method: http.MethodPost}); err != nil {
			t.Fatalf("Submit(%d) = %v", i, err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := w.Submit(ctx, &Request{URL: slow.URL, Method: http.MethodPost}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Submit() over MaxQueued = %v, want %v", err, context.DeadlineExceeded)
	}
}

// TestWorkerRecordsEveryRequestOnce: each submitted request reaches the
// recorder exactly once (so Done runs once), refused targets included.
func TestWorkerRecordsEveryRequestOnce(t *testing.T) {
	t.Parallel()
	srv := newFastServer(t)
	tests := []struct {
		name    string
		url     string
		success bool
	}{
		{"delivered", srv.URL, true},
		{"delivered, explicit path", srv.URL + "/hook", true},
		{"scheme refused", "ftp://example.com/hook", false},
		{"credentials refused", "http://user:pw@example.com/hook", false},
		{"unparsable", "http://[::1", false},
	}
	var mu sync.Mutex
	outcomes := map[string][]Outcome{}
	w := newTestWorker(t, Config{AllowHTTP: true, AllowPrivate: true}, func(r *Request, o Outcome) {
		mu.Lock()
		outcomes[r.EventID] = append(outcomes[r.EventID], o)
		mu.Unlock()
	})
	var done sync.Map
	for _, tc := range tests {
		var calls atomic.Int64
		done.Store(tc.name, &calls)
		r := &Request{URL: tc.url, Method: http.MethodPost, EventID: tc.name, Done: func() { calls.Add(1) }}
		if err := w.Submit(t.Context(), r); err != nil {
			t.Fatalf("Submit(%s) = %v", tc.url, err)
		}
	}
	w.Wait()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			got := outcomes[tc.name]
			mu.Unlock()
			if len(got) != 1 {
				t.Fatalf("recorded %d outcomes, want 1", len(got))
			}
			if got[0].Succeeded() != tc.success {
				t.Fatalf("outcome = %+v, want succeeded %v", got[0], tc.success)
			}
			calls, _ := done.Load(tc.name)
			if n := calls.(*atomic.Int64).Load(); n != 1 {
				t.Fatalf("Done called %d times, want 1", n)
			}
		})
	}
}

func TestWorkerTargetKey(t *testing.T) {
	t.Parallel()
	w := newTestWorker(t, Config{AllowHTTP: true}, nil)
	tests := []struct {
		name string
		url  string
		want string
	}{
		{"https default port", "https://Hooks.Example.com/a", "hooks.example.com:443"},
		{"https explicit port", "https://hooks.example.com:443/b", "hooks.example.com:443"},
		{"http default port", "http://hooks.example.com/", "hooks.example.com:80"},
		{"other port", "https://hooks.example.com:8443/", "hooks.example.com:8443"},
		{"ipv6", "https://[2606:4700::1111]/", "[2606:4700::1111]:443"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, got, err := w.target(tc.url)
			if err != nil {
				t.Fatalf("target(%s) error = %v", tc.url, err)
			}
			if got != tc.want {
				t.Fatalf("target(%s) = %q, want %q", tc.url, got, tc.want)
			}
		})
	}
}

// TestWorkerRateLimitsPerTarget: a rate-limited target gets its requests no
// faster than its limit, while another URL on the same host is not held to
// it. The bound checked is a lower one (the limiter can only make things
// slower), so a slow machine cannot make it fail.
func TestWorkerRateLimitsPerTarget(t *testing.T) {
	t.Parallel()
	srv := newFastServer(t)
	var mu sync.Mutex
	arrivals := map[string][]time.Time{}
	w := newTestWorker(t, Config{AllowHTTP: true, AllowPrivate: true, MaxPerHost: 4}, func(r *Request, o Outcome) {
		if !o.Succeeded() {
			t.Errorf("%s: %+v", r.URL, o)
		}
		mu.Lock()
		arrivals[r.URL] = append(arrivals[r.URL], time.Now())
		mu.Unlock()
	})
	// A limit allows a burst of one second's worth, then paces: 15 requests
	// at 10/s take at least half a second from first to last.
	const n, perSecond = 15, 10.0
	for i := range n {
		for _, u := range []string{srv.URL + "/limited", srv.URL + "/free"} {
			r := &Request{URL: u, Method: http.MethodPost, EventID: fmt.Sprint(u, i)}
			if strings.HasSuffix(u, "/limited") {
				r.RateLimit = perSecond
			}
			if err := w.Submit(t.Context(), r); err != nil {
				t.Fatal(err)
			}
		}
	}
	w.Wait()
	lim := arrivals[srv.URL+"/limited"]
	if len(lim) != n || len(arrivals[srv.URL+"/free"]) != n {
		t.Fatalf("recorded %d limited and %d free, want %d each", len(lim), len(arrivals[srv.URL+"/free"]), n)
	}
	slices.SortFunc(lim, func(a, b time.Time) int { return a.Compare(b) })
	minSpan := time.Duration(float64(n-int(perSecond)) / perSecond * float64(time.Second))
	if span := lim[n-1].Sub(lim[0]); span < minSpan*9/10 {
		t.Fatalf("%d requests at %v/s spanned %v, want at least %v", n, perSecond, span, minSpan)
	}
}

// TestAttemptHeaders: every attempt names its event and its subscription,
// whatever the dialect adds; a dialect cannot override them.
func TestAttemptHeaders(t *testing.T) {
	t.Parallel()
	got := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	done := make(chan struct{})
	w := newTestWorker(t, Config{AllowHTTP: true, AllowPrivate: true}, func(r *Request, o Outcome) {
		if !o.Succeeded() {
			t.Errorf("attempt = %+v, want success", o)
		}
		close(done)
	})
	const sub = "5b1e3f1c-0000-4000-8000-000000000001"
	err := w.Submit(context.Background(), &Request{SubscriptionID: sub, EventID: "ev-1", Event: "order.created",
		URL: srv.URL, Method: http.MethodPost, UserAgent: "walhook/test", Body: []byte(`{}`), Attempt: 3,
		Header: http.Header{"Webhook-Subscription": {"forged"}, "X-Source": {"walhook"}}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, done, "the attempt")
	h := <-got
	want := map[string]string{"Webhook-Subscription": sub, "Webhook-Id": "ev-1", "Content-Type": "application/json",
		"User-Agent": "walhook/test", "X-Source": "walhook"}
	for k, v := range want {
		if h.Get(k) != v {
			t.Fatalf("header %s = %q, want %q (all: %v)", k, h.Get(k), v, h)
		}
	}
}
