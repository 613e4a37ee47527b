package subs

import (
	"context"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/schema"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestLogLoadsAsOfAnLSN: the index loaded as of an LSN holds each
// subscription as its newest entry at or before it; pruning up to that LSN
// keeps what a load at that LSN or later needs.
func TestLogLoadsAsOfAnLSN(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := schema.Install(ctx, conn, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	db, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	const a, b = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"
	sub := func(id, event string, active bool) Entry {
		return Entry{ID: id, Sub: &Subscription{ID: id, Owner: "1", Event: event, TargetURL: "https://x/h", Site: "/", Dialect: "default", Active: active}}
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
