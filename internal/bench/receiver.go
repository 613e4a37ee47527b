package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sourcegraph/conc"
)

// ReceiverEnv, set in a process's environment, makes that process the
// bench's HTTP receiver: ReceiverMain serves and exits instead of returning.
// The bench starts its own executable with it, so that the receiver's CPU
// and memory are not walhook's.
const ReceiverEnv = "WALHOOK_BENCH_RECEIVER"

// ReceiverMain, when ReceiverEnv is set, runs the bench's receiver until
// SIGTERM or SIGINT (or the bench's death) and exits the process; otherwise
// it returns at once. main and the test binaries' TestMain call it first.
func ReceiverMain() {
	if os.Getenv(ReceiverEnv) == "" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := serveReceiver(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "walhook bench receiver:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// serveReceiver listens on 127.0.0.1, writes its base URL and a newline to
// out, and serves until ctx ends.
func serveReceiver(ctx context.Context, out io.Writer) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	r := &receiver{paths: map[string]int64{}, seen: map[uint64]struct{}{}, seed: maphash.MakeSeed()}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_stats", r.serveStats)
	mux.HandleFunc("GET /_wait", r.serveWait)
	mux.HandleFunc("POST /_reset", r.serveReset)
	mux.Handle("/", r)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	var wg conc.WaitGroup
	var serveErr error
	wg.Go(func() {
		if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			serveErr = err
		}
	})
	if _, err := fmt.Fprintf(out, "http://%s\n", ln.Addr()); err != nil {
		hs.Close()
		wg.Wait()
		return fmt.Errorf("write the address: %w", err)
	}
	<-ctx.Done()
	hs.Close()
	wg.Wait()
	return serveErr
}

// receiverStats is what GET /_stats and GET /_wait answer: counts since the
// last reset, and the process's CPU time since it started.
type receiverStats struct {
	PID int `json:"pid"`
	// Requests are the hook requests counted (paths other than /_…).
	Requests int64 `json:"requests"`
	// Events are the envelopes in them: one per occurred_at, at least one
	// per request. Requests and Events count each webhook-id once per path.
	Events int64 `json:"events"`
	// DupRequests and DupEvents count what arrived again with a webhook-id
	// already seen at its path: delivery is at least once, and an attempt
	// walhook saw fail (or a replay after a restart) may have reached the
	// receiver before.
	DupRequests   int64            `json:"dup_requests"`
	DupEvents     int64            `json:"dup_events"`
	Paths         map[string]int64 `json:"paths"`
	FirstUnixNano int64            `json:"first_unix_nano"`
	CPUMicros     int64            `json:"cpu_us"`
	// Sample is the first body since the reset to a path other than /raw.
	Sample []byte `json:"sample,omitempty"`
	// LatencyMicros are, while recording, each envelope's arrival minus its
	// occurred_at (only with ?latencies=1).
	LatencyMicros []int64 `json:"latency_us,omitempty"`
}

// receiver answers every hook request with 204 after reading its body,
// over keep-alive, and counts requests per path and envelopes.
type receiver struct {
	bufs sync.Pool

	mu       sync.Mutex // guards all below
	requests int64
	events   int64
	dupReqs  int64
	dupEvs   int64
	seen     map[uint64]struct{} // hashes of path and webhook-id
	seed     maphash.Seed
	paths    map[string]int64
	first    time.Time
	sample   []byte
	lat      []int64 // µs; appended while len < cap
	waiters  []*waiter
}

// waiter is a GET /_wait in progress: done is closed once the count it
// waits on reaches n.
type waiter struct {
	events bool // wait on events, else on requests
	n      int64
	done   chan struct{}
}

var occurredAt = []byte(`"occurred_at":"`)

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	arrival := time.Now()
	buf, _ := r.bufs.Get().(*bytes.Buffer)
	if buf == nil {
		buf = new(bytes.Buffer)
	}
	buf.Reset()
	_, _ = buf.ReadFrom(io.LimitReader(req.Body, 32<<20))
	body := buf.Bytes()

	r.mu.Lock()
	if id := req.Header.Get("webhook-id"); id != "" {
		k := maphash.String(r.seed, req.URL.Path+"\x00"+id)
		if _, dup := r.seen[k]; dup {
			r.dupReqs++
			r.dupEvs += max(int64(bytes.Count(body, occurredAt)), 1)
			r.mu.Unlock()
			r.bufs.Put(buf)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		r.seen[k] = struct{}{}
	}
	events := int64(0)
	for rest := body; ; {
		i := bytes.Index(rest, occurredAt)
		if i < 0 {
			break
		}
		events++
		rest = rest[i+len(occurredAt):]
		j := bytes.IndexByte(rest, '"')
		if j <= 0 {
			break
		}
		if len(r.lat) < cap(r.lat) {
			if t, err := time.Parse(time.RFC3339Nano, string(rest[:j])); err == nil {
				r.lat = append(r.lat, arrival.Sub(t).Microseconds())
			}
		}
		rest = rest[j:]
	}
	r.requests++
	r.events += max(events, 1)
	r.paths[req.URL.Path]++
	if r.first.IsZero() {
		r.first = arrival
	}
	if r.sample == nil && req.URL.Path != "/raw" {
		r.sample = bytes.Clone(body)
	}
	r.wake()
	r.mu.Unlock()

	r.bufs.Put(buf)
	w.WriteHeader(http.StatusNoContent)
}

// wake closes the channels of the waiters whose count is reached; r.mu is
// held.
func (r *receiver) wake() {
	keep := r.waiters[:0]
	for _, wt := range r.waiters {
		got := r.requests
		if wt.events {
			got = r.events
		}
		if got >= wt.n {
			close(wt.done)
			continue
		}
		keep = append(keep, wt)
	}
	clear(r.waiters[len(keep):])
	r.waiters = keep
}

func (r *receiver) stats(latencies bool) receiverStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := receiverStats{
		PID: os.Getpid(), Requests: r.requests, Events: r.events, DupRequests: r.dupReqs, DupEvents: r.dupEvs,
		Paths:     make(map[string]int64, len(r.paths)),
		CPUMicros: processCPU().Microseconds(), Sample: r.sample,
	}
	for p, n := range r.paths {
		s.Paths[p] = n
	}
	if !r.first.IsZero() {
		s.FirstUnixNano = r.first.UnixNano()
	}
	if latencies {
		s.LatencyMicros = slices.Clone(r.lat)
	}
	return s
}

// serveStats answers the counts; ?latencies=1 adds the latencies.
func (r *receiver) serveStats(w http.ResponseWriter, req *http.Request) {
	writeJSON(w, r.stats(req.URL.Query().Get("latencies") == "1"))
}

// serveWait answers the counts once ?events=N (or ?requests=N) have
// arrived since the reset, or after ?timeout= (a duration).
func (r *receiver) serveWait(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	wt := &waiter{events: q.Has("events"), done: make(chan struct{})}
	count := q.Get("requests")
	if wt.events {
		count = q.Get("events")
	}
	n, err := strconv.ParseInt(count, 10, 64)
	if err != nil {
		http.Error(w, "want ?events=N or ?requests=N", http.StatusBadRequest)
		return
	}
	wt.n = n
	timeout, err := time.ParseDuration(q.Get("timeout"))
	if err != nil || timeout <= 0 {
		http.Error(w, "want ?timeout=<duration>", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.waiters = append(r.waiters, wt)
	r.wake()
	r.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-wt.done:
	case <-t.C:
	case <-req.Context().Done():
	}
	r.mu.Lock()
	for i, x := range r.waiters {
		if x == wt {
			r.waiters = append(r.waiters[:i], r.waiters[i+1:]...)
			break
		}
	}
	r.mu.Unlock()
	writeJSON(w, r.stats(false))
}

// serveReset restarts the counts from zero and answers them (with the CPU
// time so far); ?record=N keeps up to N latencies from now on (none without
// it).
func (r *receiver) serveReset(w http.ResponseWriter, req *http.Request) {
	rec, _ := strconv.Atoi(req.URL.Query().Get("record"))
	r.mu.Lock()
	r.requests, r.events, r.first, r.sample = 0, 0, time.Time{}, nil
	r.dupReqs, r.dupEvs = 0, 0
	clear(r.paths)
	clear(r.seen)
	r.lat = make([]int64, 0, max(rec, 0))
	r.mu.Unlock()
	writeJSON(w, r.stats(false))
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// receiverProc is the receiver process as the bench sees it.
type receiverProc struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
	base   string
	client *http.Client
	exited bool
}

// startReceiver starts this executable as the receiver and reads its
// address. The process gets SIGTERM should the bench die first.
func startReceiver(ctx context.Context) (_ *receiverProc, err error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this executable for the receiver: %w", err)
	}
	p := &receiverProc{client: &http.Client{Transport: &http.Transport{Proxy: nil}}}
	p.cmd = exec.Command(exe)
	p.cmd.Env = append(os.Environ(), ReceiverEnv+"=1")
	p.cmd.Stderr = &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the receiver: %w", err)
	}
	defer func() {
		if err != nil {
			_ = p.stop()
		}
	}()
	// The first line is the address; a receiver that cannot listen exits,
	// which ends the read.
	type line struct {
		s   string
		err error
	}
	got := make(chan line, 1)
	var wg conc.WaitGroup
	wg.Go(func() {
		s, err := bufio.NewReader(stdout).ReadString('\n')
		got <- line{s, err}
	})
	defer wg.Wait()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case l := <-got:
		if l.err != nil || !strings.HasPrefix(l.s, "http://") {
			return nil, fmt.Errorf("read the receiver's address: %q, %v: %s", l.s, l.err, strings.TrimSpace(p.stderr.String()))
		}
		p.base = strings.TrimSpace(l.s)
	case <-timer.C:
		_ = p.cmd.Process.Kill() // ends the read
		return nil, errors.New("the receiver did not print its address within 30s")
	case <-ctx.Done():
		_ = p.cmd.Process.Kill()
		return nil, ctx.Err()
	}
	return p, nil
}

// pid is the receiver's process id.
func (p *receiverProc) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM to the receiver's PID and waits for it to exit, with
// SIGKILL after 10s. Calls after the first return nil.
func (p *receiverProc) stop() error {
	if p.exited {
		return nil
	}
	p.exited = true
	p.client.CloseIdleConnections()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	var wg conc.WaitGroup
	wg.Go(func() { done <- p.cmd.Wait() })
	defer wg.Wait()
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("receiver (pid %d): %w: %s", p.pid(), err, strings.TrimSpace(p.stderr.String()))
		}
		return nil
	case <-t.C:
		_ = p.cmd.Process.Kill()
		return fmt.Errorf("receiver (pid %d) did not exit within 10s of SIGTERM; killed", p.pid())
	}
}

func (p *receiverProc) call(ctx context.Context, method, path string) (*receiverStats, error) {
	req, err := http.NewRequestWithContext(ctx, method, p.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("receiver %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return nil, fmt.Errorf("receiver %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	var s receiverStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("receiver %s %s: decode: %w", method, path, err)
	}
	return &s, nil
}

// reset restarts the receiver's counts, keeping up to record latencies,
// and returns its CPU time so far.
func (p *receiverProc) reset(ctx context.Context, record int) (*receiverStats, error) {
	return p.call(ctx, http.MethodPost, "/_reset?record="+strconv.Itoa(record))
}

func (p *receiverProc) stats(ctx context.Context, latencies bool) (*receiverStats, error) {
	path := "/_stats"
	if latencies {
		path += "?latencies=1"
	}
	return p.call(ctx, http.MethodGet, path)
}

// wait returns the counts once n events (or requests) have arrived since the
// reset, or after timeout.
func (p *receiverProc) wait(ctx context.Context, events bool, n int, timeout time.Duration) (*receiverStats, error) {
	what := "requests"
	if events {
		what = "events"
	}
	return p.call(ctx, http.MethodGet, fmt.Sprintf("/_wait?%s=%d&timeout=%s", what, n, timeout))
}
