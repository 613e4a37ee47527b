package subs

import (
	"context"
	"slices"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/schema"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// installedPool returns a pool on a fresh database with walhook installed.
func installedPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := schema.Install(ctx, conn, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	db, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}

// TestLogLoadsAsOfAnLSN: the index loaded as of an LSN holds each
// subscription as its newest entry at or before it; pruning up to that LSN
// keeps what a load at that LSN or later needs.
func TestLogLoadsAsOfAnLSN(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := installedPool(t)

	const a, b = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"
	sub := func(id, event string, active bool) Entry {
		return Entry{ID: id, Sub: &Subscription{ID: id, Owner: "1", Events: []string{event}, TargetURL: "https://x/h", Site: "/", Dialect: "default", Active: active}}
	}
	steps := []struct {
		lsn     pglogrepl.LSN
		entries []Entry
	}{
		{100, []Entry{sub(a, "order.created", true)}},
		{200, []Entry{sub(b, "order.created", true), sub(a, "order.created", false)}},
		{300, []Entry{{ID: b, Deleted: true}}},
	}
	for _, s := range steps {
		if err := WriteLog(ctx, db, s.lsn, s.entries); err != nil {
			t.Fatal(err)
		}
	}
	active := func(at pglogrepl.LSN) []string {
		ix, err := Load(ctx, db, at)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, s := range ix.Match(nil, "order.created", []string{"/"}) {
			out = append(out, s.ID)
		}
		return out
	}
	// Loads only move forward, as a slot's confirmed LSN does; each also
	// prunes up to its LSN.
	tests := []struct {
		at   pglogrepl.LSN
		want []string
	}{
		{50, nil},
		{150, []string{a}},
		{250, []string{b}},
		{350, nil},
	}
	for _, tc := range tests {
		if got := active(tc.at); len(got) != len(tc.want) || (len(got) == 1 && got[0] != tc.want[0]) {
			t.Fatalf("active as of %d = %v, want %v", tc.at, got, tc.want)
		}
	}
	var left int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM walhook.subscription_log`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 1 {
		t.Fatalf("log rows after pruning at 350 = %d, want 1 (a's inactive entry; b's tombstone goes)", left)
	}
}

// TestLogKeepsEvents: a restart loads each subscription's whole events list
// as of the slot's LSN; an entry written before the list existed loads as
// its one event.
func TestLogKeepsEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := installedPool(t)
	const a, old = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-0000000000aa"
	events := []string{"order.created", "customer.*", "*.deleted"}
	err := WriteLog(ctx, db, 100, []Entry{{ID: a, Sub: &Subscription{ID: a, Owner: "1", Events: events,
		TargetURL: "https://x/h", Site: "/", Dialect: "default", Active: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO walhook.subscription_log (id, lsn, owner, event, target_url, site, dialect, active)
		VALUES ($1, '0/64', '1', 'order.updated', 'https://x/h', '/', 'default', true)`, old); err != nil {
		t.Fatal(err)
	}
	var first string
	if err := db.QueryRow(ctx, `SELECT event FROM walhook.subscription_log WHERE id = $1`, a).Scan(&first); err != nil || first != "order.created" {
		t.Fatalf("logged event = %q, %v; want the first of the list, order.created", first, err)
	}
	ix, err := Load(ctx, db, 150)
	if err != nil {
		t.Fatal(err)
	}
	if got := ix.Get(a).Events; !slices.Equal(got, events) {
		t.Fatalf("loaded events = %q, want %q", got, events)
	}
	if got := ix.Get(old).Events; !slices.Equal(got, []string{"order.updated"}) {
		t.Fatalf("an entry from before the list loads as %q, want [order.updated]", got)
	}
	if got := ix.Match(nil, "customer.deleted", []string{"/"}); len(got) != 1 || got[0].ID != a {
		t.Fatalf("Match(customer.deleted) after load = %v, want [%s]", got, a)
	}

	// Snapshot, for a new slot, records the lists of the live table.
	const c = "00000000-0000-0000-0000-00000000000c"
	if _, err := db.Exec(ctx, `INSERT INTO walhook.subscriptions (id, owner, events, target_url) VALUES ($1, '1', '{order.*,*.paid}', 'https://x/h')`, c); err != nil {
		t.Fatal(err)
	}
	pc, err := db.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Snapshot(ctx, pc.Conn(), 300)
	pc.Release()
	if err != nil {
		t.Fatal(err)
	}
	if ix, err = Load(ctx, db, 350); err != nil {
		t.Fatal(err)
	}
	if got := ix.Get(c).Events; !slices.Equal(got, []string{"order.*", "*.paid"}) {
		t.Fatalf("snapshotted events = %q, want [order.* *.paid]", got)
	}
}
