package walhook

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Every process reports itself in walhook.processes, so that walhook status
// shows every process, its role, and why one is not streaming (the last
// pipeline error), not only the leader's lock.

// reportEvery is how often a process updates its row; status counts a row
// not updated for staleAfter as gone.
const (
	reportEvery = 5 * time.Second
	staleAfter  = 30 * time.Second
)

var processSeq atomic.Int64

// processName names this Service: host, pid, and a sequence number for
// several Services in one program.
func processName() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s:%d:%d", host, os.Getpid(), processSeq.Add(1))
}

// reportProcess keeps this process's row in walhook.processes up to date
// until ctx ends, then removes it. Failures are logged once and retried: the
// report is for operators, never a reason to stop.
func (s *Service) reportProcess(ctx context.Context) {
	started := time.Now()
	t := time.NewTicker(reportEvery)
	defer t.Stop()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_, _ = conn.Exec(cctx, `DELETE FROM walhook.processes WHERE name = $1`, s.name)
			_ = conn.Close(cctx)
			cancel()
		}
	}()
	failing := false
	for {
		err := func() error {
			if conn == nil {
				c, err := pgx.Connect(ctx, s.cfg.DatabaseURL)
				if err != nil {
					return err
				}
				conn = c
			}
			h := s.Health()
			var lastErr *string
			var lastAt *time.Time
			if h.LastError != "" {
				lastErr, lastAt = &h.LastError, &h.LastErrorAt
			}
			_, err := conn.Exec(ctx, `INSERT INTO walhook.processes AS p (name, slot, role, streaming, version, started_at, seen_at, restarts, last_error, last_error_at)
				VALUES ($1, $2, $3, $4, $5, $6, now(), $7, $8, $9)
				ON CONFLICT (name) DO UPDATE SET role = excluded.role, streaming = excluded.streaming, seen_at = now(),
					restarts = excluded.restarts, last_error = excluded.last_error, last_error_at = excluded.last_error_at`,
				s.name, s.cfg.Slot, h.Role, h.Streaming, Version, started, h.Restarts, lastErr, lastAt)
			if err == nil {
				// Standbys that reported lately claim from the shared queue:
				// while there are any, the leader spills to it what it cannot
				// start at once (see deliver.Config.Spill).
				var peers int64
				err = conn.QueryRow(ctx, `SELECT count(*) FROM walhook.processes
					WHERE slot = $1 AND name <> $2 AND role = $3 AND seen_at > now() - $4 * interval '1 millisecond'`,
					s.cfg.Slot, s.name, RoleStandby, (3 * reportEvery).Milliseconds()).Scan(&peers)
				s.peers.Store(peers)
			}
			if err != nil {
				_ = conn.Close(context.WithoutCancel(ctx))
				conn = nil
			}
			return err
		}()
		if err != nil && ctx.Err() == nil && !failing {
			s.log.Warn("report this process in walhook.processes; trying again", "err", err)
		}
		failing = err != nil
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
