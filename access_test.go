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
	other := e.Subscribe("customer.created", "/other") // owner "1", made by the installer
	ctx := context.Background()
	app := e.loginRole("app_", "walhook_app")
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

// loginRole creates a login role for the test, member of the given roles,
// and returns a connection as it.
func (e *env) loginRole(prefix string, memberOf ...string) *pgx.Conn {
	e.T.Helper()
	role := e2e.RoleName(prefix, e.Slot)
	qr := pgx.Identifier{role}.Sanitize()
	e.Exec(`CREATE ROLE ` + qr + ` LOGIN IN ROLE ` + strings.Join(memberOf, ", "))
	e.T.Cleanup(func() {
		ctx := context.Background()
		_, _ = e.Conn.Exec(ctx, `DROP OWNED BY `+qr)
		_, _ = e.Conn.Exec(ctx, `DROP ROLE IF EXISTS `+qr)
	})
	conn, err := pgx.Connect(context.Background(), e2e.DSNAs(e.T, e.DSN, role))
	if err != nil {
		e.T.Fatal(err)
	}
	e.T.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestApplicationRoleFailsClosed: a walhook_app session that has not set
// walhook.owner sees nothing and may do nothing, also through SET ROLE.
func TestApplicationRoleFailsClosed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := context.Background()
	sub := e.Subscribe("customer.created", "/c")
	e.Exec(`INSERT INTO walhook.attempts (subscription_id, event_id, event, status, target_url) VALUES ($1, 'e1', 'customer.created', 'failed', 'https://example.com/h')`, sub)
	var attempt int64
	if err := e.Conn.QueryRow(ctx, `SELECT id FROM walhook.attempts`).Scan(&attempt); err != nil {
		t.Fatal(err)
	}
	app := e.loginRole("app_", "walhook_app")
	for _, table := range []string{"walhook.subscriptions", "walhook.attempts"} {
		var n int
		if err := app.QueryRow(ctx, `SELECT count(*) FROM `+table).Scan(&n); err != nil || n != 0 {
			t.Fatalf("without walhook.owner, app sees %d rows of %s (%v), want 0", n, table, err)
		}
	}
	calls := []struct {
		name string
		sql  string
		args []any
	}{
		{"subscribe", `SELECT walhook.subscribe('customer.created', 'https://example.com/h', '1')`, nil},
		{"subscribe a list", `SELECT walhook.subscribe(ARRAY['customer.*'], 'https://example.com/h', '1')`, nil},
		{"unsubscribe", `SELECT walhook.unsubscribe($1)`, []any{sub}},
		{"deactivate", `SELECT walhook.deactivate($1)`, []any{sub}},
		{"activate", `SELECT walhook.activate($1)`, []any{sub}},
		{"set_events", `SELECT walhook.set_events($1, ARRAY['customer.*'])`, []any{sub}},
		{"rotate_secret", `SELECT walhook.rotate_secret($1)`, []any{sub}},
		{"remove_owner", `SELECT walhook.remove_owner('1')`, nil},
		{"remove_owner of nobody", `SELECT walhook.remove_owner('nobody')`, nil},
		{"redeliver", `SELECT walhook.redeliver($1)`, []any{attempt}},
		{"secret", `SELECT walhook.secret($1)`, []any{sub}},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			_, err := app.Exec(ctx, c.sql, c.args...)
			if code, _ := sqlState(err); code != "42501" {
				t.Fatalf("%s without walhook.owner = %v, want SQLSTATE 42501", c.name, err)
			}
		})
	}
	_, err := app.Exec(ctx, `SELECT walhook.subscribe('customer.created', 'https://example.com/h', '1')`)
	if _, msg := sqlState(err); !strings.Contains(msg, "walhook.owner is not set") {
		t.Fatalf("refusal says %q, want it to name walhook.owner", msg)
	}
	if active, _ := e.SubscriptionState(sub); !active {
		t.Fatal("a refused call deactivated the subscription")
	}
	// A session that became the role with SET ROLE is scoped the same.
	role := e2e.RoleName("app_", e.Slot)
	e.Exec(`SET ROLE ` + pgx.Identifier{role}.Sanitize())
	var n int
	err = e.Conn.QueryRow(ctx, `SELECT count(*) FROM walhook.subscriptions`).Scan(&n)
	_, uerr := e.Conn.Exec(ctx, `SELECT walhook.unsubscribe($1)`, sub)
	e.Exec(`RESET ROLE`)
	if err != nil || n != 0 {
		t.Fatalf("after SET ROLE, sees %d subscriptions (%v), want 0", n, err)
	}
	if code, _ := sqlState(uerr); code != "42501" {
		t.Fatalf("after SET ROLE, unsubscribe = %v, want 42501", uerr)
	}
}

// TestAdminRoleActsForEveryOwner: walhook_admin sees and changes every
// owner's subscriptions, or one owner's when it names one.
func TestAdminRoleActsForEveryOwner(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := context.Background()
	sub := e.Subscribe("customer.created", "/c") // owner "1"
	admin := e.loginRole("adm_", "walhook_admin")
	var other string
	if err := admin.QueryRow(ctx, `SELECT walhook.subscribe('order.*', 'https://example.com/h', '2')::text`).Scan(&other); err != nil {
		t.Fatalf("admin subscribes for owner 2: %v", err)
	}
	count := func() int {
		t.Helper()
		var n int
		if err := admin.QueryRow(ctx, `SELECT count(*) FROM walhook.subscriptions`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 2 {
		t.Fatalf("admin sees %d subscriptions, want 2", n)
	}
	var ok bool
	if err := admin.QueryRow(ctx, `SELECT walhook.deactivate($1, 'by the admin')`, sub).Scan(&ok); err != nil || !ok {
		t.Fatalf("admin deactivates owner 1's: %v, %v", ok, err)
	}
	if _, err := admin.Exec(ctx, `SELECT secret FROM walhook.subscriptions`); err == nil {
		t.Fatal("admin reads secrets from the table; want them withheld")
	}
	// Naming an owner narrows the admin to it.
	if _, err := admin.Exec(ctx, `SET walhook.owner = '2'`); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("admin with walhook.owner = 2 sees %d subscriptions, want 1", n)
	}
	_, err := admin.Exec(ctx, `SELECT walhook.activate($1)`, sub)
	if code, _ := sqlState(err); code != "42501" {
		t.Fatalf("admin naming owner 2 activates owner 1's = %v, want 42501", err)
	}
}
