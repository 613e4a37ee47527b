package walhook

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/e2e"
)

const dialectConfig = `
tables:
  - table: public.customers
    noun: customer
    columns: {include: [id, name]}
    acl: "true"
dialects:
  crm:
    body: row
    method: PUT
    user_agent: acme-crm-sync/2
    headers: {X-Team: core, X-Source: walhook}
`

func TestDialectShapesTheRequest(t *testing.T) {
	t.Parallel()
	e := newEnv(t, dialectConfig)
	e.Subscribe("customer.created", "/crm", "/", "crm")
	e.Subscribe("customer.created", "/zapier", "/", "zapier")
	e.Subscribe("customer.created", "/default", "/", "default")
	e.start()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name, email) VALUES (1, 7, 'Grace', 'not included')`)

	crm := e.Recv.Wait(t, "/crm", 1)[0]
	if crm.Method != "PUT" || crm.Header.Get("User-Agent") != "acme-crm-sync/2" ||
		crm.Header.Get("X-Team") != "core" || crm.Header.Get("X-Source") != "walhook" {
		t.Fatalf("crm request: %s UA %q X-Team %q X-Source %q", crm.Method, crm.Header.Get("User-Agent"),
			crm.Header.Get("X-Team"), crm.Header.Get("X-Source"))
	}
	if got := string(crm.Body); got != `{"id":1,"name":"Grace"}` {
		t.Fatalf("crm body = %s", got)
	}
	zap := e.Recv.Wait(t, "/zapier", 1)[0]
	if zap.Method != "POST" || string(zap.Body) != `{"id":1,"name":"Grace"}` {
		t.Fatalf("zapier request: %s %s", zap.Method, zap.Body)
	}
	def := e.Recv.Wait(t, "/default", 1)[0]
	if def.Method != "POST" || !strings.HasPrefix(def.Header.Get("User-Agent"), "walhook/") ||
		!strings.Contains(string(def.Body), `"data":{"id":1,"name":"Grace"}`) {
		t.Fatalf("default request: %s UA %q body %s", def.Method, def.Header.Get("User-Agent"), def.Body)
	}
	for _, d := range []e2e.Delivery{crm, zap, def} {
		if d.Header.Get("webhook-id") == "" || d.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("%s lacks the standard headers: %v", d.Path, d.Header)
		}
	}
}

// TestCredentialHeaderKeptForRetryNeverStored: a dialect's Authorization
// header goes out on the first attempt and on the retry from the queue, yet
// never lands in walhook.attempts or walhook.deliveries.
func TestCredentialHeaderKeptForRetryNeverStored(t *testing.T) {
	t.Parallel()
	cfg := `
tables:
  - table: public.customers
    noun: customer
    acl: "true"
delivery:
  retry: [0s, 200ms, 200ms]
dialects:
  crm:
    headers: {Authorization: Bearer s3cret-token, X-Team: core}
`
	e := newEnv(t, cfg)
	e.Recv.SetStatus(e2e.FailFirst(1))
	e.Subscribe("customer.created", "/crm", "/", "crm")
	e.start()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'x')`)
	got := e.Recv.Wait(t, "/crm", 2)
	for i, d := range got[:2] {
		if d.Header.Get("Authorization") != "Bearer s3cret-token" || d.Header.Get("X-Team") != "core" {
			t.Fatalf("attempt %d headers: Authorization %q X-Team %q", i+1, d.Header.Get("Authorization"), d.Header.Get("X-Team"))
		}
	}
	e2e.WaitFor(t, 10*time.Second, "both attempts recorded", func() bool {
		var n int
		err := e.Conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.attempts`).Scan(&n)
		return err == nil && n == 2
	})
	var leaked int
	err := e.Conn.QueryRow(context.Background(), `SELECT
		(SELECT count(*) FROM walhook.attempts WHERE request_headers::text ILIKE '%s3cret%' OR request_headers::text ILIKE '%authorization%')
		+ (SELECT count(*) FROM walhook.deliveries WHERE headers::text ILIKE '%s3cret%')`).Scan(&leaked)
	if err != nil || leaked != 0 {
		t.Fatalf("stored rows carrying the credential: %d (%v), want 0", leaked, err)
	}
	var dialect string
	if err := e.Conn.QueryRow(context.Background(), `SELECT DISTINCT request_dialect FROM walhook.attempts`).Scan(&dialect); err != nil || dialect != "crm" {
		t.Fatalf("request_dialect = %q, %v; want crm", dialect, err)
	}
}
