package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/walhook/walhook/internal/e2e"
	"github.com/walhook/walhook/mapping"
	"github.com/walhook/walhook/schema"
)

// TestRunAsNonSuperuser installs with --run-role and runs walhook as a role
// that has only REPLICATION and those grants.
func TestRunAsNonSuperuser(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	role := e2e.RoleName("run_", e.Slot)
	e.Exec(`CREATE ROLE ` + pgx.Identifier{role}.Sanitize() + ` LOGIN REPLICATION`)
	t.Cleanup(func() {
		_, _ = e.Conn.Exec(context.Background(), `DROP OWNED BY `+pgx.Identifier{role}.Sanitize())
		_, _ = e.Conn.Exec(context.Background(), `DROP ROLE IF EXISTS `+pgx.Identifier{role}.Sanitize())
	})
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"install", "--database-url", e.DSN, "--config", e.CfgPath,
		"--slot", e.Slot, "--allow-http", "--run-role", role}, &out, &errOut)
	if err != nil || !strings.Contains(out.String(), "granted role "+role) {
		t.Fatalf("install --run-role = %v, output %q", err, out.String())
	}
	e.Subscribe("customer.created", "/c")
	e.DSN = e2e.DSNAs(t, e.DSN, role)
	// run reconciles static subscriptions at start, as this role.
	runConn, err := pgx.Connect(context.Background(), e.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer runConn.Close(context.Background())
	static := []*mapping.StaticSubscription{{Name: "s", Events: []string{"order.*"}, Target: "https://example.com/h", Owner: "1", Site: "/", Dialect: "default"}}
	if changes, err := schema.Reconcile(context.Background(), runConn, static); err != nil || len(changes) != 1 {
		t.Fatalf("Reconcile as the run role = %q, %v; want the subscription created", changes, err)
	}
	e.start()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'as a plain role')`)
	e.Recv.Wait(t, "/c", 1)
	// The heartbeat (every 300ms here) and the slot's progress work for the
	// plain role too: the slot passes writes to unmapped tables.
	e.Exec(`INSERT INTO public.audit_log (note) VALUES ('unmapped')`)
	target := e.CurrentLSN()
	e2e.WaitFor(t, 30*time.Second, "the slot to pass an unmapped write", func() bool { return e.Confirmed() >= target })
	var n int
	e2e.WaitFor(t, 10*time.Second, "the attempt recorded", func() bool {
		_ = e.Conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.attempts`).Scan(&n)
		return n == 1
	})
}
