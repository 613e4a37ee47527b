package walhook

import (
	"context"
	"strings"
	"testing"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// TestSignaturesVerifyWithStandardWebhooks checks real deliveries with the
// Standard Webhooks reference library, before and during a secret rotation:
// while the old secret still signs, a receiver holding either secret
// accepts the request.
func TestSignaturesVerifyWithStandardWebhooks(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	id := e.Subscribe("customer.created", "/signed", "/", "default", "generate")
	ctx := context.Background()
	var oldSecret string
	if err := e.Conn.QueryRow(ctx, `SELECT secret FROM walhook.subscriptions WHERE id = $1`, id).Scan(&oldSecret); err != nil {
		t.Fatal(err)
	}
	e.start()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'before rotation')`)
	first := e.Recv.Wait(t, "/signed", 1)[0]

	oldWH, err := standardwebhooks.NewWebhook(oldSecret)
	if err != nil {
		t.Fatal(err)
	}
	if err := oldWH.Verify(first.Body, first.Header); err != nil {
		t.Fatalf("reference library rejects the signature: %v", err)
	}

	var newSecret string
	if err := e.Conn.QueryRow(ctx, `SELECT walhook.rotate_secret($1)`, id).Scan(&newSecret); err != nil {
		t.Fatal(err)
	}
	if newSecret == oldSecret || !strings.HasPrefix(newSecret, "whsec_") {
		t.Fatalf("rotate_secret() = %q, want a new whsec_ secret", newSecret)
	}
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (2, 7, 'during rotation')`)
	second := e.Recv.Wait(t, "/signed", 2)[1]
	if n := len(strings.Fields(second.Header.Get("webhook-signature"))); n != 2 {
		t.Fatalf("webhook-signature during rotation = %q, want two signatures", second.Header.Get("webhook-signature"))
	}
	newWH, err := standardwebhooks.NewWebhook(newSecret)
	if err != nil {
		t.Fatal(err)
	}
	for name, wh := range map[string]*standardwebhooks.Webhook{"old": oldWH, "new": newWH} {
		if err := wh.Verify(second.Body, second.Header); err != nil {
			t.Fatalf("a receiver with the %s secret rejects the request: %v", name, err)
		}
	}

	// Once the overlap ends, only the new secret signs.
	e.Exec(`UPDATE walhook.subscriptions SET previous_secret_until = now() - interval '1 second' WHERE id = $1`, id)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (3, 7, 'after the overlap')`)
	third := e.Recv.Wait(t, "/signed", 3)[2]
	if err := newWH.Verify(third.Body, third.Header); err != nil {
		t.Fatalf("new secret rejects the request after the overlap: %v", err)
	}
	if err := oldWH.Verify(third.Body, third.Header); err == nil {
		t.Fatal("the old secret still verifies after the overlap ended")
	}
}
