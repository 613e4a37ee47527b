package cdc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// waitTimeout bounds every wait on the server; it exists so that a hang
// fails instead of running into the test binary's timeout.
const waitTimeout = 30 * time.Second

// slotDB is a fresh database with a published table and a pgoutput slot,
// both named after the database (slot names are per cluster, and tests run
// in parallel on one server). Dropping the database drops the slot.
type slotDB struct {
	dsn   string
	slot  string
	pub   string
	start pglogrepl.LSN // the slot's confirmed LSN when created
	conn  *pgx.Conn     // for writing rows and reading the slot
}

func newSlotDB(tb testing.TB) *slotDB {
	tb.Helper()
	ctx := context.Background()
	dsn := pgtest.NewDatabase(tb)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		tb.Fatalf("connect: %v", err)
	}
	tb.Cleanup(func() { conn.Close(context.WithoutCancel(ctx)) })
	var name string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&name); err != nil {
		tb.Fatalf("current_database(): %v", err)
	}
	for _, sql := range []string{
		`CREATE TABLE public.items (id int PRIMARY KEY, name text, qty int)`,
		// Not published: its writes are WAL the slot must skip over.
		`CREATE TABLE public.unpublished (id serial PRIMARY KEY, note text)`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			tb.Fatalf("%s: %v", sql, err)
		}
	}
	if _, err := EnsurePublication(ctx, conn, name, []string{"public.items"}, false); err != nil {
		tb.Fatalf("EnsurePublication() = %v", err)
	}
	created, start, err := EnsureSlot(ctx, conn, name)
	if err != nil || created == "" {
		tb.Fatalf("EnsureSlot() = %q, %s, %v; want a new slot", created, start, err)
	}
	return &slotDB{dsn: dsn, slot: name, pub: name, start: start, conn: conn}
}

func (db *slotDB) exec(tb testing.TB, sql string, args ...any) {
	tb.Helper()
	if _, err := db.conn.Exec(context.Background(), sql, args...); err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
}

// slotInfo reads the slot's state from the server.
func (db *slotDB) slotInfo(tb testing.TB) SlotInfo {
	tb.Helper()
	si, err := Slot(context.Background(), db.conn, db.slot)
	if err != nil {
		tb.Fatalf("Slot() = %v", err)
	}
	return si
}

// running is a Stream whose Run goroutine the test owns.
type running struct {
	s    *Stream
	out  chan Message
	stop context.CancelFunc
	wg   conc.WaitGroup
	err  error // Run's result, set once wg is done
	done chan struct{}
}

// startStream runs a stream on db's slot from start until stop is called or
// the test ends.
func startStream(tb testing.TB, db *slotDB, start pglogrepl.LSN) *running {
	tb.Helper()
	s, err := New(Config{DatabaseURL: db.dsn, Slot: db.slot, Publication: db.pub, Start: start,
		StandbyInterval: 50 * time.Millisecond}, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatalf("New() = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{s: s, out: make(chan Message), stop: cancel, done: make(chan struct{})}
	r.wg.Go(func() {
		defer close(r.done)
		r.err = s.Run(ctx, r.out)
	})
	tb.Cleanup(func() { r.halt() })
	return r
}

// halt stops the stream and returns Run's error; context.Canceled is the
// normal end.
func (r *running) halt() error {
	r.stop()
	r.wg.Wait()
	return r.err
}

// next returns the next message, failing the test if none comes in time or
// the stream ends.
func (r *running) next(tb testing.TB) Message {
	tb.Helper()
	select {
	case m := <-r.out:
		return m
	case <-r.done:
		tb.Fatalf("stream ended while waiting for a message: %v", r.err)
	case <-time.After(waitTimeout):
		tb.Fatalf("no message from the stream within %s", waitTimeout)
	}
	return Message{}
}

// waitUntil polls cond until it holds, failing the test after waitTimeout.
func waitUntil(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", waitTimeout, what)
		}
		<-tick.C
	}
}

// rowString renders a decoded row as "1,'a',NULL,?" (? for a column the
// server did not send); "" for no row.
func rowString(r change.Row) string {
	if r == nil {
		return ""
	}
	parts := make([]string, len(r))
	for i, d := range r {
		switch d.Kind {
		case change.Null:
			parts[i] = "NULL"
		case change.Unchanged:
			parts[i] = "?"
		default:
			parts[i] = string(d.Text)
		}
	}
	return strings.Join(parts, ",")
}

func describe(m Message) string {
	switch m.Kind {
	case KindChange:
		return fmt.Sprintf("change %s %s old=[%s] new=[%s]", m.Change.Op, m.Change.Relation.QualifiedName(),
			rowString(m.Change.Old), rowString(m.Change.New))
	case KindSite:
		return "site " + m.Site
	case KindCommit:
		return "commit"
	}
	return fmt.Sprintf("kind %d", m.Kind)
}

// TestStreamDeliversCommittedWork: committed row changes arrive decoded, in
// order, with a site message where it was emitted and one commit at the end;
// a rolled-back transaction and a rolled-back savepoint send nothing.
func TestStreamDeliversCommittedWork(t *testing.T) {
	t.Parallel()
	db := newSlotDB(t)
	r := startStream(t, db, db.start)

	// Nothing of this may arrive: it is rolled back before the committed
	// transaction below, so it would come first.
	db.exec(t, `BEGIN`)
	db.exec(t, `INSERT INTO public.items VALUES (99, 'rolled back', 0)`)
	db.exec(t, `SELECT pg_logical_emit_message(true, 'walhook.site', '/rolled-back')`)
	db.exec(t, `ROLLBACK`)

	db.exec(t, `BEGIN`)
	db.exec(t, `SAVEPOINT s`)
	db.exec(t, `INSERT INTO public.items VALUES (98, 'savepoint', 0)`)
	db.exec(t, `ROLLBACK TO SAVEPOINT s`)
	db.exec(t, `INSERT INTO public.items VALUES (1, 'a', 2)`)
	db.exec(t, `SELECT pg_logical_emit_message(true, 'walhook.site', '/a')`)
	// Not transactional, or another prefix: not a site of this transaction.
	db.exec(t, `SELECT pg_logical_emit_message(false, 'walhook.site', '/b')`)
	db.exec(t, `SELECT pg_logical_emit_message(true, 'other.prefix', '/c')`)
	db.exec(t, `UPDATE public.items SET name = 'b', qty = NULL WHERE id = 1`)
	db.exec(t, `DELETE FROM public.items WHERE id = 1`)
	db.exec(t, `INSERT INTO public.unpublished (note) VALUES ('not published')`)
	db.exec(t, `COMMIT`)

	// A later transaction: its change must be the very next message.
	db.exec(t, `INSERT INTO public.items VALUES (2, 'next', 3)`)

	tests := []struct {
		name string
		want string
	}{
		{name: "insert", want: "change insert public.items old=[] new=[1,a,2]"},
		{name: "site", want: "site /a"},
		{name: "update", want: "change update public.items old=[] new=[1,b,NULL]"},
		{name: "delete sends the key only", want: "change delete public.items old=[1,?,?] new=[]"},
		{name: "commit", want: "commit"},
		{name: "next transaction", want: "change insert public.items old=[] new=[2,next,3]"},
		{name: "next commit", want: "commit"},
	}
	var first *Txn
	for i, tc := range tests {
		m := r.next(t)
		if got := describe(m); got != tc.want {
			t.Fatalf("message %d (%s) = %q, want %q", i, tc.name, got, tc.want)
		}
		if m.Txn == nil {
			t.Fatalf("message %d (%s) has no Txn", i, tc.name)
		}
		switch {
		case first == nil:
			first = m.Txn
		case i <= 4 && m.Txn != first:
			t.Fatalf("message %d (%s) belongs to another Txn than the first", i, tc.name)
		case i > 4 && m.Txn == first:
			t.Fatalf("message %d (%s) belongs to the first Txn", i, tc.name)
		}
		if m.Kind == KindChange && m.Change.Tx != &m.Txn.Tx {
			t.Fatalf("message %d (%s): Change.Tx is not its Txn's Tx", i, tc.name)
		}
	}
	if first.CommitLSN == 0 || first.EndLSN <= first.CommitLSN || first.XID == 0 || first.CommitTime.IsZero() {
		t.Fatalf("first Txn = %+v, want CommitLSN < EndLSN, an XID and a commit time", first.Tx)
	}
	select {
	case m := <-r.out:
		t.Fatalf("unexpected message after the last commit: %s", describe(m))
	default:
	}
	if err := r.halt(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run() after stop = %v, want context.Canceled", err)
	}
}

// walsender reads the WAL sender's progress on db's slot: how far it has
// sent (decoded) and when the stream last replied.
func (db *slotDB) walsender(tb testing.TB) (sent pglogrepl.LSN, replied time.Time) {
	tb.Helper()
	var sentText *string
	var reply *time.Time
	err := db.conn.QueryRow(context.Background(), `SELECT r.sent_lsn::text, r.reply_time
		FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid
		WHERE s.slot_name = $1`, db.slot).Scan(&sentText, &reply)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, time.Time{}
	}
	if err != nil {
		tb.Fatalf("read pg_stat_replication: %v", err)
	}
	if sentText != nil {
		if sent, err = pglogrepl.ParseLSN(*sentText); err != nil {
			tb.Fatalf("ParseLSN(%q) = %v", *sentText, err)
		}
	}
	if reply != nil {
		replied = *reply
	}
	return sent, replied
}

// writeUnpublished writes WAL the publication filters out and returns a
// position inside it, before its commit.
func (db *slotDB) writeUnpublished(tb testing.TB) pglogrepl.LSN {
	tb.Helper()
	ctx := context.Background()
	var lsnText string
	err := pgx.BeginFunc(ctx, db.conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO public.unpublished (note) SELECT 'filler' FROM generate_series(1, 100)`); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&lsnText)
	})
	if err != nil {
		tb.Fatalf("write unpublished rows: %v", err)
	}
	lsn, err := pglogrepl.ParseLSN(lsnText)
	if err != nil {
		tb.Fatalf("ParseLSN(%q) = %v", lsnText, err)
	}
	return lsn
}

// TestStreamAcknowledgesOnlyFinishedWork: the tracker does not confirm past a
// transaction with outstanding work, not even on keepalives that come after
// it; the slot keeps what was not confirmed, so a stream restarted after a
// stop or a lost connection sends that transaction again and not the one
// before.
func TestStreamAcknowledgesOnlyFinishedWork(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// end ends the first stream and checks how Run returned.
		end func(t *testing.T, db *slotDB, r *running)
	}{
		{name: "stop", end: func(t *testing.T, db *slotDB, r *running) {
			if err := r.halt(); !errors.Is(err, context.Canceled) {
				t.Fatalf("Run() after stop = %v, want context.Canceled", err)
			}
			// The last status update reports the tracker's position.
			if got, want := db.slotInfo(t).ConfirmedFlush, r.s.Tracker().Confirmed(); got != want {
				t.Fatalf("slot confirmed_flush_lsn after stop = %s, want the tracker's %s", got, want)
			}
		}},
		{name: "connection lost", end: func(t *testing.T, db *slotDB, r *running) {
			pid := db.slotInfo(t).ActivePID
			db.exec(t, `SELECT pg_terminate_backend($1)`, pid)
			select {
			case <-r.done:
			case <-time.After(waitTimeout):
				t.Fatalf("Run() still running %s after its WAL sender was terminated", waitTimeout)
			}
			if err := r.halt(); err == nil || errors.Is(err, context.Canceled) {
				t.Fatalf("Run() after losing its connection = %v, want an error", err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := newSlotDB(t)
			r := startStream(t, db, db.start)
			tr := r.s.Tracker()

			// receive reads one transaction of one change, adding a unit
			// of work to it, and seals it at its commit.
			receive := func(what string) *Txn {
				t.Helper()
				m := r.next(t)
				if m.Kind != KindChange {
					t.Fatalf("%s: first message = %s, want a change", what, describe(m))
				}
				m.Txn.Add(1)
				c := r.next(t)
				if c.Kind != KindCommit || c.Txn != m.Txn {
					t.Fatalf("%s: second message = %s, want its commit", what, describe(c))
				}
				c.Txn.Seal()
				return c.Txn
			}

			db.exec(t, `INSERT INTO public.items VALUES (1, 'acknowledged', 1)`)
			a := receive("first transaction")
			if got := tr.Confirmed(); got >= a.EndLSN {
				t.Fatalf("Confirmed() with work outstanding = %s, want below its end %s", got, a.EndLSN)
			}
			a.Done()
			if got := tr.Confirmed(); got != a.EndLSN {
				t.Fatalf("Confirmed() after Done = %s, want %s", got, a.EndLSN)
			}

			db.exec(t, `INSERT INTO public.items VALUES (2, 'unacknowledged', 2)`)
			b := receive("second transaction") // its work is never done

			// WAL after b that the publication filters out: once the WAL
			// sender is past it, it sends keepalives with that position,
			// which must not move the tracker while b is pending.
			after := db.writeUnpublished(t)
			waitUntil(t, "the WAL sender to pass the unpublished rows", func() bool {
				sent, _ := db.walsender(t)
				return sent > after
			})
			_, replied := db.walsender(t)
			for i := range 2 {
				waitUntil(t, fmt.Sprintf("status update %d after that", i+1), func() bool {
					_, at := db.walsender(t)
					return at.After(replied)
				})
				_, replied = db.walsender(t)
			}
			// An idle keepalive between a and b may have moved Confirmed
			// past a (WAL of other databases), but never to b's commit:
			// the server skips on restart every transaction whose commit
			// record starts before the confirmed position.
			if got := tr.Confirmed(); got < a.EndLSN || got > b.CommitLSN {
				t.Fatalf("Confirmed() with the second transaction outstanding = %s, want in [%s, %s]", got, a.EndLSN, b.CommitLSN)
			}
			if got := db.slotInfo(t).ConfirmedFlush; got < a.EndLSN || got > b.CommitLSN {
				t.Fatalf("slot confirmed_flush_lsn = %s, want in [%s, %s]", got, a.EndLSN, b.CommitLSN)
			}
			// b is the oldest pending; behind it, only resolved ones (before
			// PostgreSQL 15 the unpublished writes come as empty
			// transactions, resolved at once but kept in order behind b).
			tr.mu.Lock()
			if len(tr.pending) == 0 || tr.pending[0] != b {
				tr.mu.Unlock()
				t.Fatalf("the oldest pending transaction is not the unacknowledged one")
			}
			for _, p := range tr.pending[1:] {
				if !p.resolved {
					tr.mu.Unlock()
					t.Fatalf("an unresolved transaction behind the unacknowledged one")
				}
			}
			tr.mu.Unlock()

			tc.end(t, db, r)

			// The slot is released when the WAL sender notices the closed
			// connection; until then a new stream would be refused.
			waitUntil(t, "the slot to be released", func() bool { return !db.slotInfo(t).Active })
			si := db.slotInfo(t)
			if si.ConfirmedFlush < a.EndLSN || si.ConfirmedFlush > b.CommitLSN {
				t.Fatalf("slot confirmed_flush_lsn after the end = %s, want in [%s, %s]", si.ConfirmedFlush, a.EndLSN, b.CommitLSN)
			}
			r2 := startStream(t, db, si.ConfirmedFlush)
			m := r2.next(t)
			if m.Kind != KindChange || m.Txn.CommitLSN != b.CommitLSN {
				t.Fatalf("first message after restart = %s at %s, want the unacknowledged change at %s",
					describe(m), m.Txn.CommitLSN, b.CommitLSN)
			}
			if got, want := rowString(m.Change.New), "2,unacknowledged,2"; got != want {
				t.Fatalf("replayed row = %s, want %s", got, want)
			}
			if c := r2.next(t); c.Kind != KindCommit || c.Txn.EndLSN != b.EndLSN {
				t.Fatalf("second message after restart = %s, want the commit ending at %s", describe(c), b.EndLSN)
			}
		})
	}
}

// TestStreamSlotInUse: a second stream on a slot in use fails with
// SlotActiveError, and the first one keeps streaming.
func TestStreamSlotInUse(t *testing.T) {
	t.Parallel()
	db := newSlotDB(t)
	r := startStream(t, db, db.start)
	waitUntil(t, "the slot to be active", func() bool { return db.slotInfo(t).Active })

	s2, err := New(Config{DatabaseURL: db.dsn, Slot: db.slot, Publication: db.pub, Start: db.start}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	err = s2.Run(ctx, make(chan Message))
	var active *SlotActiveError
	if !errors.As(err, &active) || active.Slot != db.slot {
		t.Fatalf("second Run() = %v, want a SlotActiveError for slot %q", err, db.slot)
	}

	db.exec(t, `INSERT INTO public.items VALUES (1, 'still streaming', 1)`)
	if m := r.next(t); m.Kind != KindChange {
		t.Fatalf("first stream after the refusal: %s, want a change", describe(m))
	}
}

// TestStreamIdleSlotAdvances: with nothing pending, keepalives move the slot
// past WAL the publication filters out, so an idle slot does not pin WAL.
func TestStreamIdleSlotAdvances(t *testing.T) {
	t.Parallel()
	db := newSlotDB(t)
	r := startStream(t, db, db.start)
	waitUntil(t, "the slot to be active", func() bool { return db.slotInfo(t).Active })

	written := db.writeUnpublished(t)
	waitUntil(t, fmt.Sprintf("the idle slot to confirm past %s", written), func() bool {
		return db.slotInfo(t).ConfirmedFlush > written
	})
	if got := r.s.Tracker().Confirmed(); got <= written {
		t.Fatalf("Confirmed() = %s, want past %s", got, written)
	}
	select {
	case m := <-r.out:
		t.Fatalf("unpublished writes sent %s", describe(m))
	default:
	}
}
