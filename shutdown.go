package walhook

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// waitSlotReleased waits, up to timeout, until the server no longer marks
// slot active. The walsender of a closed replication connection exits
// asynchronously, and pg_replication_slot_advance skips an active slot: without
// this wait, what finished during a drain could stay unacknowledged and be
// delivered again after the next start. A slot that stays active (a standby
// took over) only costs the timeout.
func waitSlotReleased(ctx context.Context, db *pgxpool.Pool, slot string, timeout time.Duration) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var active bool
		err := db.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active)
		if err != nil || !active {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-tick.C:
		}
	}
}
