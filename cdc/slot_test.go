package cdc

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook/internal/pglocal"
	"github.com/walhook/walhook/internal/pgtest"
)

func exec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestEnsureSlotFailover runs on whatever version the suite has (the CI
// matrix runs it on 14 to 18): 17 and later create a failover slot and say
// so, earlier ones say they cannot.
func TestEnsureSlotFailover(t *testing.T) {
	srv := pgtest.SharedServer(t)
	conn := pgtest.Connect(t, pgtest.NewDatabase(t))
	wantFailover := srv.Version() >= failoverVersion

	line, lsn, err := EnsureSlot(t.Context(), conn, "walhook")
	if err != nil {
		t.Fatal(err)
	}
	want := "without failover"
	if wantFailover {
		want = "with failover"
	}
	if !strings.HasPrefix(line, "created replication slot walhook at "+lsn.String()+" "+want) {
		t.Errorf("EnsureSlot() line = %q, want it to say %q (PostgreSQL %d)", line, want, srv.Version())
	}
	si, err := Slot(t.Context(), conn, "walhook")
	if err != nil {
		t.Fatal(err)
	}
	if si.Failover != wantFailover || si.Plugin != "pgoutput" || si.WALStatus != "reserved" {
		t.Errorf("Slot() = %+v, want pgoutput, failover %v, wal_status reserved", si, wantFailover)
	}
	if _, lost := si.Lost(); lost {
		t.Errorf("fresh slot reads as lost: %+v", si)
	}

	report, err := FailoverReport(t.Context(), conn, "walhook")
	if err != nil {
		t.Fatal(err)
	}
	wantReport := []string{"has no failover slots"}
	if wantFailover {
		// A lone server: everything about standbys is missing.
		wantReport = []string{"synchronized_standby_slots is empty", "no standby uses a physical slot"}
	}
	if got := strings.Join(report, "\n"); len(report) != len(wantReport) {
		t.Errorf("FailoverReport() =\n%s\nwant %d lines: %q", got, len(wantReport), wantReport)
	} else {
		for i, want := range wantReport {
			if !strings.Contains(report[i], want) {
				t.Errorf("FailoverReport() line %d = %q, want it to say %q", i, report[i], want)
			}
		}
	}

	line, again, err := EnsureSlot(t.Context(), conn, "walhook")
	if err != nil || line != "" || again != lsn {
		t.Errorf("second EnsureSlot() = %q, %s, %v; want \"\", %s, nil", line, again, err, lsn)
	}

	// A slot made without failover (an older walhook, or before an upgrade
	// to 17) gets it from the next install where the server has it.
	exec(t, conn, "SELECT pg_create_logical_replication_slot('old_slot', 'pgoutput')")
	line, _, err = EnsureSlot(t.Context(), conn, "old_slot")
	if err != nil {
		t.Fatal(err)
	}
	want = ""
	if wantFailover {
		want = "enabled failover on replication slot old_slot"
	}
	if !strings.HasPrefix(line, want) || (want == "" && line != "") {
		t.Errorf("EnsureSlot() on a slot without failover = %q, want %q (PostgreSQL %d)", line, want, srv.Version())
	}
	if si, err := Slot(t.Context(), conn, "old_slot"); err != nil || si.Failover != wantFailover {
		t.Errorf("Slot() = %+v, %v; want failover %v", si, err, wantFailover)
	}
	if !wantFailover {
		return
	}

	// While walhook streams from it the slot cannot be altered: install
	// says so and changes nothing.
	exec(t, conn, "SELECT pg_create_logical_replication_slot('busy_slot', 'pgoutput')")
	exec(t, conn, "CREATE PUBLICATION p FOR ALL TABLES")
	st, err := New(Config{DatabaseURL: conn.Config().ConnString(), Slot: "busy_slot", Publication: "p"},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg conc.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { st.Run(ctx, make(chan Message, 16)) })
	pgtest.WaitFor(t, 30*time.Second, "the stream to hold busy_slot", func() (bool, error) {
		si, err := Slot(t.Context(), conn, "busy_slot")
		return si.Active, err
	})
	line, _, err = EnsureSlot(t.Context(), conn, "busy_slot")
	if err != nil || !strings.Contains(line, "in use") {
		t.Errorf("EnsureSlot() on a busy slot without failover = %q, %v; want a line saying it is in use", line, err)
	}
	// Taken between the read and the ALTER: the server waits for the slot,
	// enableFailover gives up after alterSlotTimeout.
	line, err = enableFailover(t.Context(), conn, SlotInfo{Name: "busy_slot"})
	if err != nil || !strings.Contains(line, "in use") {
		t.Errorf("enableFailover() on a slot taken meanwhile = %q, %v; want a line saying it is in use", line, err)
	}
	// ...and cancelled the command, so no walsender waits to take the slot.
	pgtest.WaitFor(t, 10*time.Second, "the waiting ALTER_REPLICATION_SLOT to be cancelled", func() (bool, error) {
		var n int
		err := conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE backend_type = 'walsender' AND query LIKE 'ALTER_REPLICATION_SLOT%' AND state = 'active'`).Scan(&n)
		return n == 0, err
	})
}

func TestParseSlotRow(t *testing.T) {
	tests := []struct {
		name       string
		js         string
		wantLost   bool
		wantReason string
		wantConf   pglogrepl.LSN
	}{
		{"14 reserved", `{"slot_name":"s","plugin":"pgoutput","active":false,"active_pid":null,
			"confirmed_flush_lsn":"0/16B3748","restart_lsn":"0/16B3710","wal_status":"reserved"}`, false, "", 0x16B3748},
		{"14 lost", `{"slot_name":"s","plugin":"pgoutput","active":false,
			"confirmed_flush_lsn":"0/16B3748","restart_lsn":null,"wal_status":"lost"}`, true, "wal_removed", 0x16B3748},
		{"16 lost, conflicting too", `{"slot_name":"s","plugin":"pgoutput","active":false,
			"confirmed_flush_lsn":"0/5000060","wal_status":"lost","conflicting":true}`, true, "wal_removed", 0x5000060},
		{"16 conflicting on a standby", `{"slot_name":"s","plugin":"pgoutput","active":false,
			"confirmed_flush_lsn":"0/5000060","wal_status":"reserved","conflicting":true}`, true, "conflict with recovery", 0x5000060},
		{"17 failover", `{"slot_name":"s","plugin":"pgoutput","active":true,"active_pid":42,
			"confirmed_flush_lsn":"1/0","wal_status":"extended","conflicting":false,"failover":true,"synced":false,
			"invalidation_reason":null}`, false, "", 0x100000000},
		{"17 rows removed", `{"slot_name":"s","plugin":"pgoutput","active":false,"confirmed_flush_lsn":"0/10",
			"wal_status":"reserved","conflicting":true,"invalidation_reason":"rows_removed"}`, true, "rows_removed", 0x10},
		{"18 idle timeout", `{"slot_name":"s","plugin":"pgoutput","active":false,"confirmed_flush_lsn":"0/10",
			"wal_status":"lost","conflicting":false,"invalidation_reason":"idle_timeout"}`, true, "idle_timeout", 0x10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			si, err := parseSlotRow([]byte(tc.js), 0)
			if err != nil {
				t.Fatal(err)
			}
			reason, lost := si.Lost()
			if lost != tc.wantLost || reason != tc.wantReason || si.ConfirmedFlush != tc.wantConf {
				t.Errorf("Lost() = %q, %v, confirmed %s; want %q, %v, %s", reason, lost, si.ConfirmedFlush, tc.wantReason, tc.wantLost, tc.wantConf)
			}
		})
	}
}

// TestSlotLost fills WAL past a tiny max_slot_wal_keep_size while nobody
// consumes the slot, until PostgreSQL invalidates it, and checks that every
// way walhook meets the slot says so with a *SlotLostError, and that
// RecreateSlot recovers.
func TestSlotLost(t *testing.T) {
	t.Parallel()
	// A server of its own: the setting applies to every slot of a server.
	srv, err := pglocal.Start(t.Context(), pglocal.Options{Logf: t.Logf, ExtraConf: map[string]string{
		"max_slot_wal_keep_size": "1MB",
		"min_wal_size":           "32MB",
		"max_wal_size":           "64MB",
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	dsn, err := srv.CreateDatabase(t.Context(), "slot_lost")
	if err != nil {
		t.Fatal(err)
	}
	conn := pgtest.Connect(t, dsn)
	exec(t, conn, "CREATE TABLE t (id serial PRIMARY KEY, pad text)")
	exec(t, conn, "CREATE PUBLICATION p FOR TABLE t")
	if _, _, err := EnsureSlot(t.Context(), conn, "lost"); err != nil {
		t.Fatal(err)
	}
	exec(t, conn, "INSERT INTO t (pad) VALUES ('first')")
	before, err := Slot(t.Context(), conn, "lost")
	if err != nil {
		t.Fatal(err)
	}

	// Each round writes a little WAL, switches to a new segment and
	// checkpoints; the checkpoint removes segments past the keep size and
	// invalidates the slot that still needs them. A few rounds suffice.
	const rounds = 20
	var si SlotInfo
	for i := range rounds {
		exec(t, conn, "INSERT INTO t (pad) SELECT repeat('x', 100) FROM generate_series(1, 100)")
		exec(t, conn, "SELECT pg_switch_wal()")
		exec(t, conn, "CHECKPOINT")
		si, err = Slot(t.Context(), conn, "lost")
		if err != nil {
			break
		}
		if i == rounds-1 {
			t.Fatalf("slot not invalidated after %d segment switches: %+v", rounds, si)
		}
	}
	var lost *SlotLostError
	if !errors.As(err, &lost) {
		t.Fatalf("Slot() error = %v, want *SlotLostError", err)
	}
	if lost.Slot != "lost" || lost.Reason != "wal_removed" || lost.ConfirmedLSN != before.ConfirmedFlush {
		t.Errorf("SlotLostError = %+v, want slot lost, reason wal_removed, confirmed %s", lost, before.ConfirmedFlush)
	}
	if si.WALStatus != "lost" {
		t.Errorf("wal_status = %q, want lost", si.WALStatus)
	}
	if !errors.Is(err, ErrSlotMissing) {
		t.Errorf("errors.Is(%v, ErrSlotMissing) = false; callers that stop on a missing slot would retry a lost one", err)
	}
	for _, want := range []string{`"lost"`, "max_slot_wal_keep_size", before.ConfirmedFlush.String(), "walhook install --recreate-slot", "backfill"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}

	if _, _, err := EnsureSlot(t.Context(), conn, "lost"); !errors.As(err, &lost) {
		t.Errorf("EnsureSlot() on a lost slot = %v, want *SlotLostError", err)
	}

	st, err := New(Config{DatabaseURL: dsn, Slot: "lost", Publication: "p", Start: before.ConfirmedFlush},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err = st.Run(ctx, make(chan Message, 16))
	if !errors.As(err, &lost) || lost.ConfirmedLSN != before.ConfirmedFlush {
		t.Fatalf("Stream.Run() on a lost slot = %v, want *SlotLostError at %s", err, before.ConfirmedFlush)
	}

	// The walsender lets go of the slot only after the stream's connection
	// closed, a moment after Run returned; until then RecreateSlot rightly
	// refuses an active slot.
	pgtest.WaitFor(t, 10*time.Second, "the walsender to release slot lost", func() (bool, error) {
		var active bool
		err := conn.QueryRow(t.Context(), `SELECT active FROM pg_replication_slots WHERE slot_name = 'lost'`).Scan(&active)
		return !active, err
	})
	line, from, lsn, err := RecreateSlot(t.Context(), conn, "lost")
	if err != nil {
		t.Fatal(err)
	}
	if from != before.ConfirmedFlush || lsn <= from || !strings.HasPrefix(line, "recreated replication slot lost") {
		t.Errorf("RecreateSlot() = %q, %s, %s; want recreated, from %s", line, from, lsn, before.ConfirmedFlush)
	}
	if si, err := Slot(t.Context(), conn, "lost"); err != nil || si.ConfirmedFlush != lsn {
		t.Errorf("Slot() after RecreateSlot = %+v, %v; want a usable slot at %s", si, err, lsn)
	}
}
