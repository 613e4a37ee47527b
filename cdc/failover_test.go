package cdc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook/internal/pglocal"
	"github.com/walhook/walhook/internal/pgtest"
)

// collector consumes a stream: it seals every commit (so the tracker
// acknowledges it) and counts the ids of the rows it received.
type collector struct {
	mu   sync.Mutex
	seen map[int]int // id -> times received
}

func (c *collector) consume(ctx context.Context, in <-chan Message) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-in:
			switch m.Kind {
			case KindChange:
				id, _ := strconv.Atoi(string(m.Change.New[0].Text))
				c.mu.Lock()
				c.seen[id]++
				c.mu.Unlock()
			case KindCommit:
				m.Txn.Seal()
			}
		}
	}
}

func (c *collector) has(ids []int) (missing int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		if c.seen[id] == 0 {
			missing++
		}
	}
	return missing
}

// streamInto runs a stream of slot "walhook" from the slot's position in the
// background; the returned function stops it and returns its error.
func streamInto(t *testing.T, dsn string, c *collector) (stop func() error) {
	t.Helper()
	conn := pgtest.Connect(t, dsn)
	si, err := Slot(t.Context(), conn, "walhook")
	if err != nil {
		t.Fatal(err)
	}
	st, err := New(Config{DatabaseURL: dsn, Slot: "walhook", Publication: "p", Start: si.ConfirmedFlush,
		StandbyInterval: 50 * time.Millisecond}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	out := make(chan Message, 64)
	var wg conc.WaitGroup
	var runErr error
	wg.Go(func() { runErr = st.Run(ctx, out) })
	wg.Go(func() { c.consume(ctx, out) })
	return func() error {
		cancel()
		wg.Wait()
		if errors.Is(runErr, context.Canceled) {
			return nil
		}
		return runErr
	}
}

// TestFailover: walhook streams from a primary while a writer commits rows;
// the primary crashes and its streaming standby is promoted. On 17+ the
// slot, created for failover and synchronised to the standby, survives, and
// streaming resumes on the promoted standby, reached through a multi-host
// URL with target_session_attrs=read-write: every row the standby has
// reaches the consumer (duplicates are allowed and reported). Before 17 the
// slot does not survive, and walhook finds it missing, loudly.
func TestFailover(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	primary, err := pglocal.Start(ctx, pglocal.Options{Logf: t.Logf, ExtraConf: map[string]string{"wal_writer_delay": "10ms"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { primary.Stop() })
	if primary.InContainer() {
		// Not a missing PostgreSQL: the standby is a cold copy of the
		// primary's data directory, which a container does not expose.
		// .ci/run's version matrix runs this test on binaries.
		t.Skip("the failover test needs server binaries; the Docker path cannot make a standby")
	}
	failover := primary.Version() >= failoverVersion
	dsn, err := primary.CreateDatabase(ctx, "failover")
	if err != nil {
		t.Fatal(err)
	}
	setup := pgtest.Connect(t, dsn)
	exec(t, setup, "CREATE TABLE t (id int PRIMARY KEY)")
	exec(t, setup, "CREATE PUBLICATION p FOR TABLE t")
	setup.Close(ctx) // the cold copy stops the primary

	extra := map[string]string{"hot_standby_feedback": "on"}
	if failover {
		extra["sync_replication_slots"] = "on"
	}
	standby, err := primary.StartStandby(ctx, pglocal.StandbyOptions{Logf: t.Logf, Slot: "standby1", Database: "failover", ExtraConf: extra})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { standby.Stop() })
	sdsn := standby.DatabaseURL("failover")

	pconn := pgtest.Connect(t, dsn)
	if failover {
		// walhook never gets a change the standby lacks, so nothing it has
		// acknowledged is lost with the primary.
		exec(t, pconn, "ALTER SYSTEM SET synchronized_standby_slots = 'standby1'")
		exec(t, pconn, "SELECT pg_reload_conf()")
	}
	_, created, err := EnsureSlot(ctx, pconn, "walhook")
	if err != nil {
		t.Fatal(err)
	}
	if failover {
		// The standby's slot sync worker doubles its nap, up to 30s, while
		// the primary has no failover slot; a restart starts it at 200ms.
		if err := standby.Restart(ctx, "fast"); err != nil {
			t.Fatal(err)
		}
	}
	begin := time.Now()

	c := &collector{seen: map[int]int{}}
	stop := streamInto(t, dsn, c)

	// The writer commits one row per transaction until the primary dies.
	const maxRows = 20000
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	var writer conc.WaitGroup
	writer.Go(func() {
		for id := 1; id <= maxRows && wctx.Err() == nil; id++ {
			if _, err := pconn.Exec(wctx, "INSERT INTO t VALUES ($1)", id); err != nil {
				return
			}
		}
	})

	sconn := pgtest.Connect(t, sdsn)
	mon := pgtest.Connect(t, dsn) // pconn belongs to the writer
	// Wait until walhook has acknowledged a few hundred rows and, on 17+,
	// the standby holds a synchronised, persistent copy of the slot at or
	// past a position walhook acknowledged.
	var acked pglogrepl.LSN
	pgtest.WaitFor(t, 60*time.Second, "walhook to acknowledge 300 rows", func() (bool, error) {
		if c.has(seq(1, 300)) != 0 {
			return false, nil
		}
		si, err := Slot(ctx, mon, "walhook")
		acked = si.ConfirmedFlush
		return err == nil && acked > created, err
	})
	t.Logf("walhook acknowledged %s after %s", acked, time.Since(begin).Round(time.Millisecond))
	if failover {
		pgtest.WaitFor(t, 90*time.Second, "the standby's synced copy of the slot to reach "+acked.String(), func() (bool, error) {
			// The synced copy stays temporary until the primary's slot moves
			// its restart_lsn past what the standby could reserve, which
			// waits for a running-transactions record: the bgwriter logs one
			// every 15s, this asks for one now.
			if _, err := mon.Exec(ctx, "SELECT pg_log_standby_snapshot()"); err != nil {
				return false, err
			}
			var ok bool
			err := sconn.QueryRow(ctx, `SELECT synced AND NOT temporary AND confirmed_flush_lsn >= $1::text::pg_lsn
				FROM pg_replication_slots WHERE slot_name = 'walhook'`, acked.String()).Scan(&ok)
			return ok, err
		})
		t.Logf("the standby's copy of the slot reached it after %s", time.Since(begin).Round(time.Millisecond))
		if report, err := FailoverReport(ctx, mon, "walhook"); err != nil || len(report) != 0 {
			t.Errorf("FailoverReport() on a primary ready for failover = %q, %v; want nothing to report", report, err)
		}
	}

	// The primary dies (pg_ctl stop -m immediate); the standby is promoted.
	if err := primary.Stop(); err != nil {
		t.Fatal(err)
	}
	wcancel()
	writer.Wait()
	if err := stop(); err == nil {
		t.Log("stream on the primary ended without an error")
	}
	exec(t, sconn, "SELECT pg_promote(true, 60)")

	si, err := Slot(ctx, sconn, "walhook")
	if !failover {
		if !errors.Is(err, ErrSlotMissing) {
			t.Fatalf("Slot() on the promoted standby of PostgreSQL %d = %+v, %v; want ErrSlotMissing", primary.Version(), si, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("Slot() on the promoted standby: %v", err)
	}
	if !si.Failover {
		t.Errorf("slot on the promoted standby: %+v, want failover", si)
	}

	c.mu.Lock()
	fromPrimary := make([]int, 0, len(c.seen))
	for id := range c.seen {
		fromPrimary = append(fromPrimary, id)
	}
	c.mu.Unlock()

	// walhook's URL names both servers and asks for the writable one, as in
	// production: the dead primary is skipped, the promoted standby taken.
	stop = streamInto(t, multiHost(t, dsn, sdsn), c)
	rows, err := sconn.Query(ctx, "SELECT id FROM t ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]int, len(have))
	for i, id := range have {
		ids[i] = int(id)
	}
	// synchronized_standby_slots held back every change the standby lacked:
	// nothing walhook received from the primary is missing on the standby.
	onStandby := make(map[int]bool, len(ids))
	for _, id := range ids {
		onStandby[id] = true
	}
	for _, id := range fromPrimary {
		if !onStandby[id] {
			t.Errorf("row %d reached walhook from the primary but not the standby", id)
		}
	}
	// New rows on the promoted standby arrive too.
	exec(t, sconn, "INSERT INTO t VALUES ($1)", maxRows+1)
	ids = append(ids, maxRows+1)
	pgtest.WaitFor(t, 60*time.Second, "every row on the promoted standby to arrive", func() (bool, error) {
		return c.has(ids) == 0, nil
	})
	if err := stop(); err != nil {
		t.Errorf("stream on the promoted standby: %v", err)
	}
	c.mu.Lock()
	dups := 0
	for _, n := range c.seen {
		if n > 1 {
			dups++
		}
	}
	c.mu.Unlock()
	t.Logf("PostgreSQL %d: %d rows on the promoted standby all arrived; %d delivered more than once", primary.Version(), len(ids), dups)
}

func seq(from, to int) []int {
	s := make([]int, 0, to-from+1)
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

// multiHost returns a URL naming the servers of dsns, in order, for database
// "failover", with target_session_attrs=read-write.
func multiHost(t *testing.T, dsns ...string) string {
	t.Helper()
	var hosts []string
	for _, dsn := range dsns {
		cfg, err := pgconn.ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, fmt.Sprintf("%s:%d", cfg.Host, cfg.Port))
	}
	return "postgres://postgres@" + strings.Join(hosts, ",") + "/failover?sslmode=disable&target_session_attrs=read-write"
}
