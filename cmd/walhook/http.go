package main

import (
	"io"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/walhook/walhook/internal/metrics"
)

// newHTTPHandler serves the operational endpoints on --listen:
//
//	/healthz  200 "ok" while the process runs (liveness)
//	/readyz   200 "leader streaming" or "standby"; 503 "starting" or
//	          "leader, pipeline down" (readiness)
//	/metrics  the Prometheus metrics of m's registry
func newHTTPHandler(state *serviceState, m *metrics.Metrics) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, what := state.Ready()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = io.WriteString(w, what+"\n")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	return mux
}

// Ready says whether the process does what it should: it leads and streams,
// or it stands by ready to take over. While it starts, or leads with its
// pipeline down (restarting after a failure, draining on shutdown), it is not
// ready.
func (s *serviceState) Ready() (bool, string) {
	switch role := s.Role(); {
	case role == roleLeader && s.streaming.Load():
		return true, "leader streaming"
	case role == roleLeader:
		return false, "leader, pipeline down"
	case role == roleStandby:
		return true, roleStandby
	default:
		return false, role
	}
}

// leading reports the state as walhook_leader and walhook_streaming read it.
func (s *serviceState) leading() (leader, streaming bool) {
	return s.Role() == roleLeader, s.streaming.Load()
}
