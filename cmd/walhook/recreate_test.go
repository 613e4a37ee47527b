package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// TestInstallRecreateSlot checks that install --recreate-slot replaces the
// slot with one at the current position, says which range was skipped, and
// records the existing subscriptions for the new slot, as a first install
// does.
func TestInstallRecreateSlot(t *testing.T) {
	e := newEnv(t, "")
	id := e.Subscribe("order.created", "/a")
	old := e.Confirmed()
	e.Exec("INSERT INTO public.audit_log (note) VALUES ('written before the recreation')")

	var out, errOut bytes.Buffer
	args := []string{"--database-url", e.DSN, "--config", e.CfgPath, "--slot", e.Slot, "--allow-http", "--recreate-slot"}
	if err := cmdInstall(context.Background(), args, &out, &errOut); err != nil {
		t.Fatalf("install --recreate-slot: %v\n%s", err, errOut.String())
	}
	now := e.Confirmed()
	for _, want := range []string{"recreated replication slot " + e.Slot, "changes between " + old.String() + " and " + now.String(),
		"recorded 1 existing subscription(s) for the new slot"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("install --recreate-slot printed:\n%s\nwant a line with %q", out.String(), want)
		}
	}
	if now <= old {
		t.Errorf("slot at %s after recreation, want past %s", now, old)
	}
	var n int
	if err := e.Conn.QueryRow(context.Background(),
		`SELECT count(*) FROM walhook.subscription_log WHERE id = $1 AND lsn = $2::text::pg_lsn`, id, now.String()).Scan(&n); err != nil || n != 1 {
		t.Errorf("subscription log rows for %s at %s = %d, %v; want 1", id, now, n, err)
	}
	if _, err := cdc.Slot(context.Background(), e.Conn, e.Slot); err != nil {
		t.Errorf("Slot() after recreation: %v", err)
	}
}
