package walhook

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/demo"
	"github.com/walhook/walhook/internal/e2e"
	"github.com/walhook/walhook/internal/pglocal"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/mapping"
)

// installState is what install changes, read back to show that a refused
// or dry-run install changed none of it.
type installState struct {
	schema      bool
	publication bool
	slot        bool
	identity    map[string]string // relreplident by table
}

func readInstallState(t *testing.T, conn *pgx.Conn, slot string) installState {
	t.Helper()
	ctx := context.Background()
	st := installState{identity: map[string]string{}}
	err := conn.QueryRow(ctx, `SELECT to_regnamespace('walhook') IS NOT NULL,
			EXISTS (SELECT 1 FROM pg_publication),
			EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, slot).Scan(&st.schema, &st.publication, &st.slot)
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"public.orders", "public.customers", "app.users"} {
		var ident string
		if err := conn.QueryRow(ctx, `SELECT relreplident::text FROM pg_class WHERE oid = $1::regclass`, table).Scan(&ident); err != nil {
			t.Fatal(err)
		}
		st.identity[table] = ident
	}
	return st
}

func (st installState) untouched() bool {
	for _, ident := range st.identity {
		if ident != "d" {
			return false
		}
	}
	return !st.schema && !st.publication && !st.slot
}

func demoConfig(t *testing.T) *mapping.Config {
	t.Helper()
	cfg, err := mapping.Parse("walhook.yaml", demo.Config)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestInstallOnReplicaWALLevelChangesNothing installs on a server with
// wal_level = replica: install must refuse, saying how to fix it, before it
// creates the schema or publication or changes a replica identity.
func TestInstallOnReplicaWALLevelChangesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := ownServer(t, map[string]string{"wal_level": "replica"}, "replica_level")

	for _, dryRun := range []bool{true, false} {
		_, err := Install(ctx, conn, demoConfig(t), InstallOptions{DryRun: dryRun})
		want := "wal_level is replica; walhook needs logical decoding: run ALTER SYSTEM SET wal_level = logical as a superuser, then restart PostgreSQL"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("Install(DryRun: %v) = %v, want an error containing %q", dryRun, err, want)
		}
		if st := readInstallState(t, conn, cdc.DefaultSlot); !st.untouched() {
			t.Fatalf("after the refused install: %+v, want no schema, publication or slot and every identity d", st)
		}
	}
}

// TestInstallRefusesAnotherDatabasesSlot installs in a second database of
// the same cluster with the first one's slot name.
func TestInstallRefusesAnotherDatabasesSlot(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.WithoutCancel(ctx)) })
	if _, err := conn.Exec(ctx, demo.Schema); err != nil {
		t.Fatal(err)
	}
	_, err = Install(ctx, conn, e.Config(), InstallOptions{Slot: e.Slot})
	first := e.Conn.Config().Database
	want := `replication slot "` + e.Slot + `" belongs to database ` + first + `, not ` + conn.Config().Database
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "--slot") {
		t.Fatalf("Install() in a second database = %v, want an error containing %q and naming --slot", err, want)
	}
	if st := readInstallState(t, conn, "not-"+e.Slot); !st.untouched() {
		t.Fatalf("second database after the refused install: %+v, want nothing installed", st)
	}
}

// TestInstallDryRunThenInstallThenUninstall: a dry run prints the changes
// and makes none; install makes them, replica identity included; uninstall
// puts the identities back.
func TestInstallDryRunThenInstallThenUninstall(t *testing.T) {
	t.Parallel()
	e := e2e.NewEnv(t, "")
	ctx := context.Background()
	opts := InstallOptions{Slot: e.Slot, AllowHTTP: true}
	wantLines := []string{
		"applied migration 0001_init.sql",
		"created publication walhook for app.users, public.customers, public.orders, walhook.owner_state, walhook.subscriptions",
		"set REPLICA IDENTITY FULL on public.orders (was DEFAULT; walhook uninstall restores it): its rules read old.status",
		"set REPLICA IDENTITY FULL on public.customers (was DEFAULT; walhook uninstall restores it): its rules read tenant_id of deleted rows",
		"created replication slot " + e.Slot,
	}
	has := func(lines []string, want string) bool {
		return strings.Contains(strings.Join(lines, "\n"), want)
	}

	dry := opts
	dry.DryRun = true
	lines, err := Install(ctx, e.Conn, e.Config(), dry)
	if err != nil {
		t.Fatalf("Install(DryRun) = %v", err)
	}
	for _, w := range wantLines {
		if !has(lines, w) {
			t.Fatalf("Install(DryRun) lines:\n%s\nwant one containing %q", strings.Join(lines, "\n"), w)
		}
	}
	if st := readInstallState(t, e.Conn, e.Slot); !st.untouched() {
		t.Fatalf("after a dry run: %+v, want nothing changed", st)
	}

	lines, err = Install(ctx, e.Conn, e.Config(), opts)
	if err != nil {
		t.Fatalf("Install() = %v", err)
	}
	for _, w := range wantLines {
		if !has(lines, w) {
			t.Fatalf("Install() lines:\n%s\nwant one containing %q", strings.Join(lines, "\n"), w)
		}
	}
	st := readInstallState(t, e.Conn, e.Slot)
	if !st.schema || !st.publication || !st.slot || st.identity["public.orders"] != "f" || st.identity["public.customers"] != "f" || st.identity["app.users"] != "d" {
		t.Fatalf("after install: %+v, want all installed, orders and customers FULL, users DEFAULT (remove_on_delete reads its key)", st)
	}
	if lines, err := Install(ctx, e.Conn, e.Config(), dry); err != nil || len(lines) != 0 {
		t.Fatalf("Install(DryRun) when up to date = %q, %v; want nothing", lines, err)
	}

	// Someone changes customers back by hand: uninstall leaves it be.
	e.Exec(`ALTER TABLE public.customers REPLICA IDENTITY NOTHING`)
	lines, err = Uninstall(ctx, e.Conn, UninstallOptions{Slot: e.Slot, DropSchema: true})
	if err != nil {
		t.Fatalf("Uninstall() = %v", err)
	}
	for _, w := range []string{
		"dropped replication slot " + e.Slot,
		"restored REPLICA IDENTITY DEFAULT on public.orders (walhook install had set FULL)",
		"left REPLICA IDENTITY of public.customers as it is (nothing)",
		"dropped schema walhook",
	} {
		if !has(lines, w) {
			t.Fatalf("Uninstall() lines:\n%s\nwant one containing %q", strings.Join(lines, "\n"), w)
		}
	}
	st = readInstallState(t, e.Conn, e.Slot)
	if st.schema || st.publication || st.slot || st.identity["public.orders"] != "d" || st.identity["public.customers"] != "n" {
		t.Fatalf("after uninstall: %+v, want nothing installed, orders DEFAULT again, customers as set by hand", st)
	}
}

// TestLostSlot loses the slot (max_slot_wal_keep_size passed while nothing
// reads it): Status reports slot_lost, and Check refuses it with the fix.
func TestLostSlot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := ownServer(t, map[string]string{"max_slot_wal_keep_size": "1MB"}, "lost_slot")
	if _, err := Install(ctx, conn, demoConfig(t), InstallOptions{}); err != nil {
		t.Fatalf("Install() = %v", err)
	}
	// Each round writes, moves to a new WAL segment and checkpoints; a
	// checkpoint removes the segments past max_slot_wal_keep_size and marks
	// the slot lost.
	walStatus := ""
	for round := 0; round < 20 && walStatus != "lost"; round++ {
		if _, err := conn.Exec(ctx, `INSERT INTO public.audit_log (note) VALUES ('x'); SELECT pg_switch_wal(); CHECKPOINT`); err != nil {
			t.Fatal(err)
		}
		if err := conn.QueryRow(ctx, `SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1`, cdc.DefaultSlot).Scan(&walStatus); err != nil {
			t.Fatal(err)
		}
	}
	if walStatus != "lost" {
		t.Fatalf("wal_status after 20 segments = %q, want lost", walStatus)
	}

	st, err := Status(ctx, conn, cdc.DefaultSlot)
	if err != nil {
		t.Fatalf("Status() = %v", err)
	}
	if len(st.Problems) == 0 || st.Problems[0] != ProblemSlotLost {
		t.Fatalf("Status().Problems = %q, want slot_lost first", st.Problems)
	}
	_, err = Check(ctx, conn, demoConfig(t), CheckOptions{})
	want := `replication slot "walhook" is lost (wal_status = lost)`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Check() = %v, want an error containing %q", err, want)
	}
}

// TestInstallGivesTablesWithoutIdentityOne maps a table without a primary
// key (key: [id]): published as it is, PostgreSQL would refuse its UPDATEs
// and DELETEs, so install sets REPLICA IDENTITY FULL and says why. A table
// keyed by another column than its primary key gets FULL for its deletes to
// carry the key; one whose deletes produce nothing does not.
func TestInstallGivesTablesWithoutIdentityOne(t *testing.T) {
	t.Parallel()
	cfg := strings.Replace(string(demo.Config), "delivery:", `  - table: public.notes
    noun: note
    key: [id]
    acl: 'true'
  - table: public.tags
    noun: tag
    key: [code]
    acl: 'true'
  - table: public.labels
    noun: label
    key: [code]
    verbs: {insert: created}
    acl: 'true'

delivery:`, 1)
	e := &env{Env: e2e.NewEnv(t, cfg, `CREATE TABLE public.notes (id bigint NOT NULL, body text);
		CREATE TABLE public.tags (id bigint PRIMARY KEY, code text NOT NULL UNIQUE);
		CREATE TABLE public.labels (id bigint PRIMARY KEY, code text NOT NULL UNIQUE)`)}
	lines := strings.Join(e.install(), "\n")
	for _, want := range []string{
		"set REPLICA IDENTITY FULL on public.notes (was DEFAULT; walhook uninstall restores it): it has no replica identity (NOTHING, or DEFAULT without a primary key), and once published PostgreSQL would refuse its UPDATEs and DELETEs",
		"set REPLICA IDENTITY FULL on public.tags (was DEFAULT; walhook uninstall restores it): deletes must carry its key (code) for receivers to tell which row went",
	} {
		if !strings.Contains(lines, want) {
			t.Fatalf("install lines:\n%s\nwant %q", lines, want)
		}
	}
	if strings.Contains(lines, "FULL on public.labels") {
		t.Fatalf("install lines:\n%s\nwant nothing about public.labels, which maps no deletes", lines)
	}
	var ident string
	if err := e.Conn.QueryRow(context.Background(), `SELECT relreplident::text FROM pg_class WHERE oid = 'public.notes'::regclass`).Scan(&ident); err != nil || ident != "f" {
		t.Fatalf("replica identity of public.notes after install = %q, %v; want f", ident, err)
	}
	e.Exec(`INSERT INTO public.notes VALUES (1, 'a')`)
	e.Exec(`UPDATE public.notes SET body = 'b' WHERE id = 1`)
	e.Exec(`DELETE FROM public.notes WHERE id = 1`)
}

// ownServer starts a server of the test's own with the settings conf (they
// apply to the whole server), creates database db in it with the demo
// schema, and returns a connection to it. It skips when
// WALHOOK_TEST_DATABASE_URL names an external server, whose settings a test
// cannot change.
func ownServer(t *testing.T, conf map[string]string, db string) *pgx.Conn {
	t.Helper()
	if os.Getenv(pglocal.EnvDatabaseURL) != "" {
		t.Skipf("%s names an external server, whose settings this test cannot change (%v)", pglocal.EnvDatabaseURL, conf)
	}
	ctx := context.Background()
	srv, err := pglocal.Start(ctx, pglocal.Options{ExtraConf: conf, Logf: t.Logf})
	if err != nil {
		t.Fatalf("start a server with %v: %v", conf, err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Error(err)
		}
	})
	dsn, err := srv.CreateDatabase(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.WithoutCancel(ctx)) })
	if _, err := conn.Exec(ctx, demo.Schema); err != nil {
		t.Fatal(err)
	}
	return conn
}
