package walhook

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/internal/demo"
	"github.com/walhook/walhook/internal/e2e"
	"github.com/walhook/walhook/mapping"
)

// TestCheckCatchesMistakes checks configs with typos against the demo
// database: each is an error naming the file, line and field.
func TestCheckCatchesMistakes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := context.Background()
	replace := func(old, repl string) string {
		t.Helper()
		cfg := string(demo.Config)
		if !strings.Contains(cfg, old) {
			t.Fatalf("demo config has no %q", old)
		}
		return strings.Replace(cfg, old, repl, 1)
	}
	const ordersACL = "acl: row.tenant_id in owner.tenants || owner.admin"
	tests := []struct {
		name string
		cfg  string
		want []string // substrings of the error, "" for success
	}{
		{name: "the demo config", cfg: string(demo.Config)},
		{name: "a column typo", cfg: replace(ordersACL, "acl: row.tenant_idd in owner.tenants || owner.admin"),
			want: []string{`walhook.yaml:15: tables[0].acl: column 1: row.tenant_idd: public.orders has no column "tenant_idd"; did you mean "tenant_id"?`}},
		{name: "an attribute typo", cfg: replace(ordersACL, "acl: row.tenant_id in owner.tenant || owner.admin"),
			want: []string{`walhook.yaml:15: tables[0].acl: column 18: owner.tenant: owners.query returns no column "tenant"; did you mean "tenants"?`}},
		{name: "a typo in a when", cfg: replace("when: new.status == 'paid' && old.status != 'paid'", "when: new.stat == 'paid' && old.status != 'paid'"),
			want: []string{`walhook.yaml:19: tables[0].events[0].when: column 1: new.stat: public.orders has no column "stat"; did you mean "status"?`}},
		{name: "$1 is not text[]", cfg: replace("WHERE id::text = ANY($1)", "WHERE id = ANY($1)"),
			want: []string{`walhook.yaml:4: owners.query: $1 is bigint[]; it must be text[]`}},
		{name: "$1 is text", cfg: replace("WHERE id::text = ANY($1)", "WHERE id::text = $1"),
			want: []string{`walhook.yaml:4: owners.query: $1 is text; it must be text[]`}},
		{name: "a query that does not prepare", cfg: replace("is_admin AS admin", "is_admn AS admin"),
			want: []string{`walhook.yaml:4: owners.query: does not prepare: column "is_admn" does not exist`}},
		{name: "an id that is not text", cfg: replace("SELECT id::text AS id", "SELECT id"),
			want: []string{`walhook.yaml:4: owners.query: its id column is bigint; want text`}},
		{name: "remove_on_delete column", cfg: replace("{table: app.users, column: id}", "{table: app.users, column: user_id}"),
			want: []string{`walhook.yaml:8: owners.remove_on_delete.column: column "user_id" does not exist in app.users`}},
		{name: "every mistake at once", cfg: replace(ordersACL, "acl: row.tenant_idd in owner.tenant || owner.admin"),
			want: []string{`row.tenant_idd`, `owner.tenant:`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := mapping.Parse("walhook.yaml", []byte(tc.cfg))
			if err != nil {
				t.Fatalf("Parse() = %v", err)
			}
			_, err = Check(ctx, e.Conn, cfg, CheckOptions{Slot: e.Slot})
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Check() = %v, want nil", err)
				}
				return
			}
			var errs mapping.Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Check() = %v, want mapping.Errors", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("Check() = %v, want it to contain %q", err, w)
				}
			}
		})
	}
}

// TestCheckPrivileges runs Check as a role that may neither replicate nor
// read the owners table.
func TestCheckPrivileges(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := context.Background()
	role := e2e.RoleName("chk_", e.Slot)
	e.Exec(`CREATE ROLE ` + pgx.Identifier{role}.Sanitize() + ` LOGIN`)
	t.Cleanup(func() {
		_, _ = e.Conn.Exec(context.Background(), `DROP OWNED BY `+pgx.Identifier{role}.Sanitize())
		_, _ = e.Conn.Exec(context.Background(), `DROP ROLE IF EXISTS `+pgx.Identifier{role}.Sanitize())
	})
	e.Exec(`GRANT USAGE ON SCHEMA app TO ` + pgx.Identifier{role}.Sanitize())
	conn, err := pgx.Connect(ctx, e2e.DSNAs(t, e.DSN, role))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.WithoutCancel(ctx)) })
	warnings, err := Check(ctx, conn, e.Config(), CheckOptions{Slot: e.Slot})
	for _, want := range []string{
		"role " + role + " may not replicate: run ALTER ROLE",
		"may not SELECT from app.users, which owners.query reads: GRANT SELECT ON \"app\".\"users\"",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("Check() as %s = %v, %v; want an error containing %q", role, warnings, err, want)
		}
	}
	var dbErr DatabaseError
	if !errors.As(err, &dbErr) {
		t.Fatalf("Check() = %v, want a DatabaseError", err)
	}

	// With REPLICATION and SELECT on app.users only the mapped tables are
	// left, and those are warnings: only backfill reads them.
	e.Exec(`ALTER ROLE ` + pgx.Identifier{role}.Sanitize() + ` REPLICATION`)
	e.Exec(`GRANT SELECT ON app.users TO ` + pgx.Identifier{role}.Sanitize())
	warnings, err = Check(ctx, conn, e.Config(), CheckOptions{Slot: e.Slot})
	if err != nil || !strings.Contains(strings.Join(warnings, "\n"), "may not SELECT from public.orders: walhook.backfill() cannot read it") {
		t.Fatalf("Check() = %q, %v; want a warning about public.orders", warnings, err)
	}
}
