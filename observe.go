package walhook

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/internal/metrics"
)

// sampleMetrics keeps the figures that are not counted as they happen up to
// date until ctx ends: the slot's lag and retained WAL (one query), and the
// acknowledgement lag and pending transactions (the tracker). While it runs,
// the per-destination gauges read w.
func (s *Service) sampleMetrics(ctx context.Context, db *pgxpool.Pool, tr *cdc.Tracker, w *deliver.Worker) {
	m := s.metrics
	m.SetDestinations(func() []metrics.Destination {
		load := w.Load()
		out := make([]metrics.Destination, len(load))
		for i, l := range load {
			out[i] = metrics.Destination{Host: l.Host, InFlight: l.InFlight, Queued: l.Queued}
		}
		return out
	})
	defer m.SetDestinations(nil)
	t := time.NewTicker(s.cfg.SampleInterval)
	defer t.Stop()
	log := s.log.With("component", "metrics")
	failing := false
	for {
		m.LagSeconds.Set(tr.Lag(time.Now()).Seconds())
		m.PendingTxns.Set(float64(tr.Pending()))
		if err := sampleSlot(ctx, db, s.cfg.Slot, m); err != nil && ctx.Err() == nil {
			// Logged once per run of failures: the pipeline itself reports
			// a database that went away.
			if !failing {
				log.Warn("sample slot lag; the lag gauges keep their last values", "err", err)
			}
			failing = true
		} else {
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sampleSlot sets the slot gauges from pg_replication_slots.
func sampleSlot(ctx context.Context, db *pgxpool.Pool, slot string, m *metrics.Metrics) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var lag, retained int64
	err := db.QueryRow(ctx, `SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint,
			coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&lag, &retained)
	if err != nil {
		return err
	}
	m.LagBytes.Set(float64(max(lag, 0)))
	m.RetainedBytes.Set(float64(max(retained, 0)))
	return nil
}
