package walhook

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/walhook/walhook/internal/e2e"
)

// TestApplicationRoleSeesOnlyItsOwner: a role granted walhook_app with
// walhook.owner set sees and changes only that owner's subscriptions, and
// reads secrets only through walhook.secret() for its own.
func TestApplicationRoleSeesOnlyItsOwner(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	role := e2e.RoleName("app_", e.Slot)
	qr := pgx.Identifier{role}.Sanitize()
	e.Exec(`CREATE ROLE ` + qr + ` LOGIN IN ROLE walhook_app`)
	t.Cleanup(func() { _, _ = e.Conn.Exec(context.Background(), `DROP ROLE IF EXISTS `+qr) })
	other := e.Subscribe("customer.created", "/other") // owner "1", made by the installer
	ctx := context.Background()
	app, err := pgx.Connect(ctx, e2e.DSNAs(t, e.DSN, role))
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
	if err := e.Conn.QueryRow(ctx, `SELECT count(*) FROM walhook.subscriptions`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("installer sees %d subscriptions (%v), want 2", n, err)
	}
}
