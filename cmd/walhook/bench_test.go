package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/internal/bench"
	"github.com/walhook/walhook/internal/pgtest"
)

// TestBench is a smoke test: a tiny bench run of each mode against the
// shared server finishes, its separate receiver process counts every
// delivery and exits, and no slot is left behind.
func TestBench(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, r *bench.Result)
	}{
		{
			name: "full",
			args: []string{"--rows", "200", "--tx-sizes", "50,1", "--batch", "10", "--subscriptions", "2",
				"--rate", "100", "--duration", "1s", "--http-requests", "200", "--http-clients", "2,4"},
			check: func(t *testing.T, r *bench.Result) {
				if len(r.Shapes) != 2 {
					t.Fatalf("shapes = %+v, want transactions of 50 and of 1", r.Shapes)
				}
				for i, txs := range []int{4, 200} {
					sh := r.Shapes[i]
					if bl := sh.Backlog; bl.Transactions != txs || bl.XIDs < int64(txs) {
						t.Errorf("tx size %d: backlog = %+v, want %d transactions, each with its xid", sh.TxSize, bl, txs)
					}
					if sh.Stream == nil || sh.Stream.RowsPerSec <= 0 {
						t.Errorf("tx size %d: stream limit = %+v, want a rate", sh.TxSize, sh.Stream)
					}
					// Delivery is at least once: a duplicate is allowed, and
					// said, but each distinct delivery is one request.
					if sh.CatchUp != nil && sh.CatchUp.Duplicates > 0 {
						t.Logf("tx size %d: %d events arrived twice", sh.TxSize, sh.CatchUp.Duplicates)
					}
					// The receiver process counted each delivery as one request.
					if c := sh.CatchUp; c.Deliveries != 400 || c.Requests != 400 || c.Share <= 0 || c.PeakRSSMiB <= 0 || c.ReceiverCPUPerDelivery <= 0 {
						t.Errorf("tx size %d: catch-up = %+v, want 400 deliveries in 400 requests, a share of the limit, RSS and receiver CPU", sh.TxSize, c)
					}
					if c := sh.Batch; c == nil || c.Deliveries != 400 || c.Requests < 40 || c.Requests >= 400 || c.Share <= 0 {
						t.Errorf("tx size %d: batched catch-up = %+v, want 400 deliveries in 40 to 399 requests", sh.TxSize, c)
					}
				}
				var kinds []string
				for _, h := range r.HTTP {
					kinds = append(kinds, fmt.Sprintf("%s/%d", h.Body, h.Clients))
					if h.Requests*h.EventsPerRequest < 200-h.EventsPerRequest || h.PerSec <= 0 {
						t.Errorf("HTTP limit %+v, want about 200 events posted, with a rate", h)
					}
				}
				if want := []string{"event/2", "event/4", "batch/2", "batch/4"}; !slices.Equal(kinds, want) {
					t.Errorf("HTTP limits = %v, want %v", kinds, want)
				}
				if r.HTTPLimit <= 0 || r.HTTPBatchLimit <= 0 {
					t.Errorf("HTTP limits: best %v, batches %v, want rates", r.HTTPLimit, r.HTTPBatchLimit)
				}
				l := r.Latency
				if l == nil || l.Committed == 0 || l.Delivered != 2*l.Committed || l.P99ms <= 0 {
					t.Errorf("latency = %+v, want every commit delivered twice and percentiles", l)
				}
				if len(r.Goals) != 3 {
					t.Errorf("goals = %+v, want two catch-ups and latency", r.Goals)
				}
			},
		},
		{
			name: "single transaction",
			args: []string{"--rss-rows", "500"},
			check: func(t *testing.T, r *bench.Result) {
				if d := r.SingleTx; d == nil || d.Deliveries != 500 || d.Requests != 500 || d.PeakRSSMiB <= 0 {
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
			// The receiver was a process of its own, and it is gone.
			if rc := r.Receiver; rc == nil || rc.PID <= 0 || rc.PID == os.Getpid() || !rc.Exited {
				t.Errorf("receiver = %+v, want another process that exited", rc)
			} else if err := syscall.Kill(rc.PID, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("receiver pid %d: kill -0 = %v, want ESRCH", rc.PID, err)
			}

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
