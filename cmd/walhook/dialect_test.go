package main

import (
	"strings"
	"testing"
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
	e.subscribe("customer.created", "/crm", "/", "crm")
	e.subscribe("customer.created", "/zapier", "/", "zapier")
	e.subscribe("customer.created", "/default", "/", "default")
	e.start()
	e.exec(`INSERT INTO public.customers (id, tenant_id, name, email) VALUES (1, 7, 'Grace', 'not included')`)

	crm := e.recv.wait(t, "/crm", 1)[0]
	if crm.Method != "PUT" || crm.Header.Get("User-Agent") != "acme-crm-sync/2" ||
		crm.Header.Get("X-Team") != "core" || crm.Header.Get("X-Source") != "walhook" {
		t.Fatalf("crm request: %s UA %q X-Team %q X-Source %q", crm.Method, crm.Header.Get("User-Agent"),
			crm.Header.Get("X-Team"), crm.Header.Get("X-Source"))
	}
	if got := string(crm.Body); got != `{"id":1,"name":"Grace"}` {
		t.Fatalf("crm body = %s", got)
	}
	zap := e.recv.wait(t, "/zapier", 1)[0]
	if zap.Method != "POST" || string(zap.Body) != `{"id":1,"name":"Grace"}` {
		t.Fatalf("zapier request: %s %s", zap.Method, zap.Body)
	}
	def := e.recv.wait(t, "/default", 1)[0]
	if def.Method != "POST" || !strings.HasPrefix(def.Header.Get("User-Agent"), "walhook/") ||
		!strings.Contains(string(def.Body), `"data":{"id":1,"name":"Grace"}`) {
		t.Fatalf("default request: %s UA %q body %s", def.Method, def.Header.Get("User-Agent"), def.Body)
	}
	for _, d := range []delivery{crm, zap, def} {
		if d.Header.Get("webhook-id") == "" || d.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("%s lacks the standard headers: %v", d.Path, d.Header)
		}
	}
}
