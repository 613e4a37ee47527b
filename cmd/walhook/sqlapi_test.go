package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walhook/walhook/internal/demo"
)

func TestCheckCommand(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Exec(`ALTER TABLE public.orders REPLICA IDENTITY DEFAULT`)
	tests := []struct {
		name     string
		config   string
		withDB   bool
		wantErr  string
		wantOut  string
		exitCode int
	}{
		{name: "valid", config: string(demo.Config), withDB: true, wantOut: "ok: 2 table(s)"},
		{name: "warns of a missing replica identity", config: string(demo.Config), withDB: true, wantOut: "public.orders lacks REPLICA IDENTITY FULL, but its rules read old.status (updates carry the old row only under FULL)"},
		{name: "unknown key", config: "tables:\n  - table: public.orders\n    noun: order\n    acl: 'true'\n    colour: red\n", wantErr: `walhook.yaml:5: tables[0].colour: unknown key`, exitCode: 1},
		{name: "unknown column with database", config: "tables:\n  - table: public.orders\n    noun: order\n    acl: 'true'\n    columns: {exclude: [nope]}\n", withDB: true, wantErr: `walhook.yaml:5: tables[0].columns.exclude`, exitCode: 1},
		{name: "a typo in a rule", config: strings.Replace(string(demo.Config), "row.tenant_id in owner.tenants", "row.tenant_id in owner.tenant", 1), withDB: true,
			wantErr: `walhook.yaml:15: tables[0].acl: column 18: owner.tenant: owners.query returns no column "tenant"; did you mean "tenants"?`, exitCode: 1},
		{name: "unknown table with database", config: "tables:\n  - table: public.ordres\n    noun: order\n    acl: 'true'\n", withDB: true, wantErr: `walhook.yaml:2: tables[0].table`, exitCode: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "walhook.yaml")
			if err := os.WriteFile(path, []byte(tc.config), 0o600); err != nil {
				t.Fatal(err)
			}
			args := []string{"check", "--config", path, "--slot", e.Slot}
			if tc.withDB {
				args = append(args, "--database-url", e.DSN)
			}
			var out, errOut bytes.Buffer
			err := run(context.Background(), args, &out, &errOut)
			if tc.wantErr == "" {
				if err != nil || !strings.Contains(out.String(), tc.wantOut) {
					t.Fatalf("check = %v, output %q; want success containing %q", err, out.String(), tc.wantOut)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || exitCode(err) != tc.exitCode {
				t.Fatalf("check error = %v (exit %d), want containing %q (exit %d)", err, exitCode(err), tc.wantErr, tc.exitCode)
			}
		})
	}
}

func TestRunRefusesAConfigNotInstalled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	newer := strings.Replace(string(demo.Config), "  - table: public.customers", "  - table: public.audit_log\n    noun: audit\n    acl: 'true'\n  - table: public.customers", 1)
	path := filepath.Join(t.TempDir(), "newer.yaml")
	if err := os.WriteFile(path, []byte(newer), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"run", "--database-url", e.DSN, "--config", path, "--slot", e.Slot, "--listen", ""}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "not installed: public.audit_log, event audit.created") {
		t.Fatalf("run with a newer config = %v, want it refused naming what is not installed", err)
	}
}

func TestUninstall(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := context.Background()
	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"uninstall", "--database-url", e.DSN, "--slot", e.Slot}, &out, &errOut); err != nil {
		t.Fatalf("uninstall: %v (%s)", err, errOut.String())
	}
	var slots, pubs int
	var schemaLeft bool
	query := func() {
		t.Helper()
		err := e.Conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1),
			(SELECT count(*) FROM pg_publication WHERE pubname = 'walhook'),
			to_regnamespace('walhook') IS NOT NULL`, e.Slot).Scan(&slots, &pubs, &schemaLeft)
		if err != nil {
			t.Fatal(err)
		}
	}
	query()
	if slots != 0 || pubs != 0 || !schemaLeft {
		t.Fatalf("after uninstall: slots %d, publications %d, schema kept %v; want 0, 0, true", slots, pubs, schemaLeft)
	}
	if !strings.Contains(out.String(), "restored REPLICA IDENTITY DEFAULT on public.orders (walhook install had set FULL)") {
		t.Fatalf("uninstall printed:\n%s\nwant the restored replica identity of public.orders", out.String())
	}
	var ident string
	if err := e.Conn.QueryRow(ctx, `SELECT relreplident::text FROM pg_class WHERE oid = 'public.orders'::regclass`).Scan(&ident); err != nil || ident != "d" {
		t.Fatalf("replica identity of public.orders after uninstall = %q, %v; want d", ident, err)
	}
	if err := run(ctx, []string{"uninstall", "--database-url", e.DSN, "--slot", e.Slot, "--drop-schema"}, &out, &errOut); err != nil {
		t.Fatalf("uninstall --drop-schema: %v", err)
	}
	query()
	if schemaLeft {
		t.Fatal("schema walhook still there after --drop-schema")
	}
}

func TestFlagsRefuseBadNames(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"status", "--database-url", "postgres://x/y", "--slot", "Bad-Slot"},
		{"install", "--database-url", "postgres://x/y", "--publication", "pub'); DROP"},
	} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), args, &out, &errOut)
		if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "lower-case letters, digits and _") {
			t.Fatalf("run(%q) = %v (exit %d), want a usage error naming the rule", args, err, exitCode(err))
		}
	}
}

func TestInstallDryRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := context.Background()
	e.Exec(`ALTER TABLE public.orders REPLICA IDENTITY DEFAULT`)
	var out, errOut bytes.Buffer
	args := []string{"install", "--database-url", e.DSN, "--config", e.CfgPath, "--slot", e.Slot, "--allow-http", "--dry-run"}
	if err := run(ctx, args, &out, &errOut); err != nil {
		t.Fatalf("install --dry-run: %v (%s)", err, errOut.String())
	}
	want := "dry run, nothing changed; install would make these changes:\n" +
		"  set REPLICA IDENTITY FULL on public.orders (was DEFAULT; walhook uninstall restores it): its rules read old.status (updates carry the old row only under FULL)\n"
	if out.String() != want {
		t.Fatalf("install --dry-run printed:\n%s\nwant:\n%s", out.String(), want)
	}
	var ident string
	if err := e.Conn.QueryRow(ctx, `SELECT relreplident::text FROM pg_class WHERE oid = 'public.orders'::regclass`).Scan(&ident); err != nil || ident != "d" {
		t.Fatalf("replica identity of public.orders after a dry run = %q, %v; want d (unchanged)", ident, err)
	}
	out.Reset()
	if err := run(ctx, args[:len(args)-1], &out, &errOut); err != nil || !strings.HasPrefix(out.String(), "set REPLICA IDENTITY FULL on public.orders") {
		t.Fatalf("install = %v, printed %q; want the replica identity change", err, out.String())
	}
	out.Reset()
	if err := run(ctx, args, &out, &errOut); err != nil || out.String() != "dry run: walhook is installed and up to date; install would change nothing\n" {
		t.Fatalf("install --dry-run when up to date = %v, printed %q", err, out.String())
	}
}
