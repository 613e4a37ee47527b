package schema

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// newConn connects to a fresh database, closed when the test ends.
func newConn(t *testing.T) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestMigrationsAreNumberedInOrder(t *testing.T) {
	migs, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range migs {
		if m.Version != i+1 {
			t.Fatalf("migration %d is %s (version %d), want version %d: no gaps, no duplicates", i, m.Name, m.Version, i+1)
		}
		if strings.TrimSpace(m.SQL) == "" {
			t.Fatalf("migration %s is empty", m.Name)
		}
	}
}

func TestInstallAppliesOnceAndSyncs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := newConn(t)
	if v, err := Version(ctx, conn); err != nil || v != 0 {
		t.Fatalf("Version() before install = %d, %v; want 0", v, err)
	}
	opts := Options{
		Events:   []Event{{Name: "order.created", Table: "public.orders", Operation: "insert"}},
		Dialects: []string{"zapier"},
		Settings: map[string]string{"allow_http": "false"},
	}
	rep, err := Install(ctx, conn, opts)
	if err != nil {
		t.Fatal(err)
	}
	migs, _ := Migrations()
	applied := 0
	for _, c := range rep.Changes {
		if strings.HasPrefix(c, "applied migration") {
			applied++
		}
	}
	if applied != len(migs) {
		t.Fatalf("first install applied %d migrations, want %d: %q", applied, len(migs), rep.Changes)
	}
	if v, err := Version(ctx, conn); err != nil || v != len(migs) {
		t.Fatalf("Version() = %d, %v; want %d", v, err, len(migs))
	}
	rep, err = Install(ctx, conn, opts)
	if err != nil || len(rep.Changes) != 0 {
		t.Fatalf("second install = %q, %v; want no changes", rep.Changes, err)
	}
	opts.Events = append(opts.Events, Event{Name: "order.paid", Table: "public.orders", Operation: "update", Derived: true})
	opts.Dialects = nil
	rep, err = Install(ctx, conn, opts)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(rep.Changes, "\n")
	for _, want := range []string{"event order.paid (public.orders)", "removed 1 dialect(s)"} {
		if !strings.Contains(got, want) {
			t.Fatalf("third install changes:\n%s\nwant a line with %q", got, want)
		}
	}
}
