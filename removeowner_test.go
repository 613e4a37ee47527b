package walhook

import (
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/demo"
	"github.com/walhook/walhook/internal/e2e"
)

// TestRemoveOnDeleteOnlyItsTable deletes a row of another watched table
// whose id is a user's id: owners.remove_on_delete names app.users, so the
// user keeps its subscriptions; deleting the user removes them.
func TestRemoveOnDeleteOnlyItsTable(t *testing.T) {
	t.Parallel()
	cfg := strings.Replace(string(demo.Config), "watch: [app.users]", "watch: [app.users, app.memberships]", 1)
	e := newEnv(t, cfg, `CREATE TABLE app.memberships (id bigint PRIMARY KEY, user_id bigint NOT NULL, tenant_id bigint NOT NULL);
		INSERT INTO app.memberships VALUES (2, 1, 7)`)
	e.SubscribeAs("2", "order.created", "/bob")
	e.SubscribeAs("2", "customer.created", "/bob")
	e.SubscribeAs("1", "customer.created", "/marker")
	e.start()
	owned := func(owner string) int {
		t.Helper()
		return e.Count(`SELECT count(*) FROM walhook.subscriptions WHERE owner = $1`, owner)
	}

	// Membership 2 is not user 2. The customer inserted after it is a marker:
	// changes are handled in commit order, so once it arrives the delete has
	// been handled.
	e.Exec(`DELETE FROM app.memberships WHERE id = 2`)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'marker')`)
	e.Recv.Wait(t, "/marker", 1)
	if n := owned("2"); n != 2 {
		t.Fatalf("user 2's subscriptions after deleting membership 2 = %d, want 2", n)
	}

	e.Exec(`DELETE FROM app.users WHERE id = 2`)
	e2e.WaitFor(t, 30*time.Second, "user 2's subscriptions to go", func() bool { return owned("2") == 0 })
	if n := owned("1"); n != 1 {
		t.Fatalf("user 1's subscriptions = %d, want 1", n)
	}
}
