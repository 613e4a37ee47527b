package walhook

import (
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Roles a process can have, as Health and /readyz report them.
const (
	RoleStarting = "starting"
	RoleStandby  = "standby"
	RoleLeader   = "leader"
)

// Health is a snapshot of what a Service is doing.
type Health struct {
	// Ready says the process does what it should: it leads and streams, or
	// stands by ready to take over. /readyz answers 503 while it is false.
	Ready bool
	// Role is RoleStarting, RoleStandby or RoleLeader.
	Role string
	// Streaming is true while the leader's pipeline runs.
	Streaming bool
	// Detail is /readyz's text: "leader streaming", "standby",
	// "leader, pipeline down", "starting".
	Detail string
	// LastError is the pipeline's last failure ("" for none), with its time;
	// Restarts counts the restarts after failures.
	LastError   string
	LastErrorAt time.Time
	Restarts    int64
}

// state is what Health reads; every field is safe for concurrent use.
type state struct {
	role      atomic.Value // string
	streaming atomic.Bool
	restarts  atomic.Int64

	mu        sync.Mutex
	lastErr   string
	lastErrAt time.Time
}

func newState() *state {
	s := &state{}
	s.role.Store(RoleStarting)
	return s
}

func (s *state) Role() string { return s.role.Load().(string) }

// failed records a pipeline failure; readiness drops at once.
func (s *state) failed(err error) {
	s.streaming.Store(false)
	s.mu.Lock()
	s.lastErr, s.lastErrAt = err.Error(), time.Now()
	s.mu.Unlock()
}

func (s *state) health() Health {
	h := Health{Role: s.Role(), Streaming: s.streaming.Load(), Restarts: s.restarts.Load()}
	switch {
	case h.Role == RoleLeader && h.Streaming:
		h.Ready, h.Detail = true, "leader streaming"
	case h.Role == RoleLeader:
		h.Detail = "leader, pipeline down"
	case h.Role == RoleStandby:
		h.Ready, h.Detail = true, RoleStandby
	default:
		h.Detail = h.Role
	}
	s.mu.Lock()
	h.LastError, h.LastErrorAt = s.lastErr, s.lastErrAt
	s.mu.Unlock()
	return h
}

// leading reports the state as walhook_leader and walhook_streaming read it.
func (s *state) leading() (leader, streaming bool) {
	return s.Role() == RoleLeader, s.streaming.Load()
}

// Health reports what the service is doing now.
func (s *Service) Health() Health { return s.state.health() }

// Handler serves the operational endpoints:
//
//	/healthz  200 "ok" while the process runs (liveness)
//	/readyz   200 "leader streaming" or "standby"; 503 "starting" or
//	          "leader, pipeline down" (readiness), with the last error
//	/metrics  the service's Prometheus metrics
//	/console/ the operators' console; /portal/ each owner's portal
//	          (internal/console)
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		h := s.Health()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !h.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = io.WriteString(w, h.Detail+"\n")
		if !h.Ready && h.LastError != "" {
			_, _ = io.WriteString(w, "last error: "+h.LastError+"\n")
		}
	})
	m := s.metrics
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	mux.Handle("/console", s.consoleHandler()) // the console and portal: console.go
	mux.Handle("/console/", s.consoleHandler())
	mux.Handle("/portal/", s.consoleHandler())
	return mux
}
