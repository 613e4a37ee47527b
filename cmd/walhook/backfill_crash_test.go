package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/walhook/walhook"
	"github.com/walhook/walhook/internal/e2e"
)

// TestBackfillSurvivesKill kills walhook with SIGKILL in the middle of a
// backfill and starts it again: the backfill resumes from its last finished
// chunk and every existing row arrives.
func TestBackfillSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test: not in -short")
	}
	t.Parallel()
	ctx := context.Background()
	e := e2e.NewEnv(t, "")
	cfg, _, err := loadConfig(e.CfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := walhook.Install(ctx, e.Conn, cfg, walhook.InstallOptions{Slot: e.Slot, AllowHTTP: true}); err != nil {
		t.Fatal(err)
	}
	const rows = 10000
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) SELECT i, 7, i FROM generate_series(1, $1::int) i`, rows)
	sub := e.Subscribe("order.*", "/all")
	var id int64
	if err := e.Conn.QueryRow(ctx, `SELECT walhook.backfill($1)`, sub).Scan(&id); err != nil {
		t.Fatal(err)
	}
	proc := startProcess(t, e.DSN, e.CfgPath, e.Slot)
	e2e.WaitFor(t, 60*time.Second, "some chunks", func() bool {
		return e.Count(`SELECT rows_sent::int FROM walhook.backfills WHERE id = $1`, id) >= 2000
	})
	proc.kill(t)
	if n := e.Count(`SELECT count(*) FROM walhook.backfills WHERE id = $1 AND status = 'running'`, id); n != 1 {
		t.Fatalf("backfill %d not running after the kill", id)
	}
	startProcess(t, e.DSN, e.CfgPath, e.Slot)
	e2e.WaitFor(t, 120*time.Second, "the backfill to finish", func() bool {
		return e.Count(`SELECT count(*) FROM walhook.backfills WHERE id = $1 AND status = 'done'`, id) == 1
	})
	seen := map[float64]bool{}
	e2e.WaitFor(t, 60*time.Second, "every row", func() bool {
		for _, d := range e.Recv.Deliveries("/all") {
			var env struct {
				Data map[string]any `json:"data"`
			}
			if json.Unmarshal(d.Body, &env) == nil {
				if k, ok := env.Data["id"].(float64); ok {
					seen[k] = true
				}
			}
		}
		return len(seen) == rows
	})
	t.Logf("%d deliveries for %d rows (a chunk under way at the kill is sent again)", len(e.Recv.Deliveries("/all")), rows)
}
