package main

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/internal/bench"
	"github.com/walhook/walhook/internal/pgtest"
)

// TestBench is a smoke test: a tiny bench run of each mode against the
// shared server finishes, accounts for every delivery, and leaves no slot
// behind.
func TestBench(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, r *bench.Result)
	}{
		{
			name: "full",
			args: []string{"--rows", "300", "--tx-size", "50", "--subscriptions", "2", "--rate", "100", "--duration", "1s", "--http-requests", "500"},
			check: func(t *testing.T, r *bench.Result) {
				if r.Stream == nil || r.Stream.RowsPerSec <= 0 {
					t.Errorf("stream limit = %+v, want a rate", r.Stream)
				}
				if r.CatchUp == nil || r.CatchUp.Deliveries != 600 || r.CatchUp.PerSec <= 0 || r.CatchUp.PeakRSSMiB <= 0 {
					t.Errorf("catch-up = %+v, want 600 deliveries with a rate and a peak RSS", r.CatchUp)
				}
				if len(r.HTTP) == 0 || r.HTTP[0].Requests != 500 || r.HTTP[0].Clients != 256 {
					t.Errorf("HTTP limit = %+v, want 500 requests from 256 clients first", r.HTTP)
				}
				l := r.Latency
				if l == nil || l.Committed == 0 || l.Delivered != 2*l.Committed || l.P99ms <= 0 {
					t.Errorf("latency = %+v, want every commit delivered twice and percentiles", l)
				}
				if len(r.Goals) != 2 {
					t.Errorf("goals = %+v, want catch-up and latency", r.Goals)
				}
			},
		},
		{
			name: "single transaction",
			args: []string{"--rss-rows", "500"},
			check: func(t *testing.T, r *bench.Result) {
				if d := r.SingleTx; d == nil || d.Deliveries != 500 || d.PeakRSSMiB <= 0 {
					t.Errorf("single tx = %+v, want 500 deliveries and a peak RSS", d)
				}
				if r.Backlog == nil || r.Backlog.Transactions != 1 {
					t.Errorf("backlog = %+v, want one transaction", r.Backlog)
				}
				if len(r.Goals) != 1 {
					t.Errorf("goals = %+v, want the RSS goal", r.Goals)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dsn := pgtest.NewDatabase(t)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var stdout, stderr bytes.Buffer
			args := append([]string{"bench", "--database-url", dsn, "--json", "--phase-timeout", "1m"}, tc.args...)
			if err := run(ctx, args, &stdout, &stderr); err != nil {
				t.Fatalf("run(%v) = %v; stderr:\n%s", args, err, stderr.String())
			}
			var r bench.Result
			if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
				t.Fatalf("decode output %q: %v", stdout.String(), err)
			}
			tc.check(t, &r)

			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.WithoutCancel(ctx))
			var slots int
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`).Scan(&slots); err != nil {
				t.Fatal(err)
			}
			if slots != 0 {
				t.Errorf("%d slot(s) left behind, want none", slots)
			}
		})
	}
}
