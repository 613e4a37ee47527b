package main

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// dsnAs returns dsn with another user.
func dsnAs(t *testing.T, dsn, user string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(user)
	return u.String()
}

// roleName makes a role name for a test: roles are cluster-wide, so it is
// derived from the test's own database, within PostgreSQL's 63 bytes.
func roleName(prefix, slot string) string {
	role := prefix + slot
	if len(role) > 63 {
		role = role[:63]
	}
	return role
}

// TestRunAsNonSuperuser installs with --run-role and runs walhook as a role
// that has only REPLICATION and those grants.
func TestRunAsNonSuperuser(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	role := roleName("run_", e.slot)
	e.exec(`CREATE ROLE ` + pgx.Identifier{role}.Sanitize() + ` LOGIN REPLICATION`)
	t.Cleanup(func() {
		_, _ = e.conn.Exec(context.Background(), `DROP OWNED BY `+pgx.Identifier{role}.Sanitize())
		_, _ = e.conn.Exec(context.Background(), `DROP ROLE IF EXISTS `+pgx.Identifier{role}.Sanitize())
	})
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"install", "--database-url", e.dsn, "--config", e.cfgPath,
		"--slot", e.slot, "--allow-http", "--run-role", role}, &out, &errOut)
	if err != nil || !strings.Contains(out.String(), "granted role "+role) {
		t.Fatalf("install --run-role = %v, output %q", err, out.String())
	}
	e.subscribe("customer.created", "/c")
	e.dsn = dsnAs(t, e.dsn, role)
	e.start()
	e.exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'as a plain role')`)
	e.recv.wait(t, "/c", 1)
	// The heartbeat (every 300ms here) and the slot's progress work for the
	// plain role too: the slot passes writes to unmapped tables.
	e.exec(`INSERT INTO public.audit_log (note) VALUES ('unmapped')`)
	target := e.currentLSN()
	waitFor(t, 30*time.Second, "the slot to pass an unmapped write", func() bool { return e.confirmed() >= target })
	var n int
	waitFor(t, 10*time.Second, "the attempt recorded", func() bool {
		_ = e.conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.attempts`).Scan(&n)
		return n == 1
	})
}

// TestApplicationRoleSeesOnlyItsOwner: a role granted walhook_app with
// walhook.owner set sees and changes only that owner's subscriptions, and
// reads secrets only through walhook.secret() for its own.
func TestApplicationRoleSeesOnlyItsOwner(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	role := roleName("app_", e.slot)
	qr := pgx.Identifier{role}.Sanitize()
	e.exec(`CREATE ROLE ` + qr + ` LOGIN IN ROLE walhook_app`)
	t.Cleanup(func() { _, _ = e.conn.Exec(context.Background(), `DROP ROLE IF EXISTS `+qr) })
	other := e.subscribe("customer.created", "/other") // owner "1", made by the installer
	ctx := context.Background()
	app, err := pgx.Connect(ctx, dsnAs(t, e.dsn, role))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	if _, err := app.Exec(ctx, `SET walhook.owner = '2'`); err != nil {
		t.Fatal(err)
	}
	var mine string
	if err := app.QueryRow(ctx, `SELECT walhook.subscribe('customer.created', 'https://example.com/h', '2', secret => 'generate')::text`).Scan(&mine); err != nil {
		t.Fatalf("subscribe as own owner: %v", err)
	}
	denied := func(what, sql string, args ...any) {
		t.Helper()
		_, err := app.Exec(ctx, sql, args...)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Fatalf("%s: error = %v, want SQLSTATE 42501", what, err)
		}
	}
	denied("subscribe for another owner", `SELECT walhook.subscribe('customer.created', 'https://example.com/h', '1')`)
	denied("unsubscribe another's", `SELECT walhook.unsubscribe($1)`, other)
	denied("deactivate another's", `SELECT walhook.deactivate($1)`, other)
	denied("read secrets from the table", `SELECT secret FROM walhook.subscriptions`)
	denied("read another's secret", `SELECT walhook.secret($1)`, other)

	rows, err := app.Query(ctx, `SELECT id::text FROM walhook.subscriptions`)
	if err != nil {
		t.Fatal(err)
	}
	visible, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(visible) != 1 || visible[0] != mine {
		t.Fatalf("app sees subscriptions %v, want only its own %s", visible, mine)
	}
	var secret string
	if err := app.QueryRow(ctx, `SELECT walhook.secret($1)`, mine).Scan(&secret); err != nil || !strings.HasPrefix(secret, "whsec_") {
		t.Fatalf("walhook.secret(own) = %q, %v", secret, err)
	}
	var n int
	if err := e.conn.QueryRow(ctx, `SELECT count(*) FROM walhook.subscriptions`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("installer sees %d subscriptions (%v), want 2", n, err)
	}
}
